"""The job store (dicomcr.jobs) and the policy value (dicomcr.config.Policy), on real SQLite files:
the round trip of a policy, the migration of an older store, work handed to workers and taken
back, and `dicomcr status` showing images and derived objects apart."""

from __future__ import annotations

import contextlib
import math
import re
import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dicomcr.config import UNKNOWN_AE_POLICY, Compression, ConfigError, Policy, load_config
from dicomcr.jobs import (
    InstanceState,
    Job,
    JobStore,
    ObjectKind,
    StoreError,
    StudyJob,
    StudyState,
    queue_depth,
)

CR20 = Policy(Compression.CR, 20.0)


# -- Policy ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "policy", "text"), [
    ("20", CR20, "20"),
    (20, CR20, "20"),
    (20.0, CR20, "20"),
    (" 20 ", CR20, "20"),
    ("12.5", Policy(Compression.CR, 12.5), "12.5"),
    (11000, Policy(Compression.CR, 11000.0), "11000"),
    ("lossless", Policy(Compression.LOSSLESS), "lossless"),
    ("Lossless", Policy(Compression.LOSSLESS), "lossless"),
    ("none", Policy(Compression.PASS_THROUGH), "none"),
])
def test_a_policy_parses_and_prints_the_form_the_store_keeps(value, policy: Policy,
                                                             text: str) -> None:
    parsed = Policy.parse(value)
    assert parsed == policy and str(parsed) == text
    assert Policy.parse(str(parsed)) == parsed  # what the store writes reads back the same
    assert hash(parsed) == hash(policy)  # a value: usable as a key


def test_what_a_policy_asks_of_the_transcoder() -> None:
    assert (CR20.targets, CR20.lossless, CR20.transcodes) == ((20.0,), False, True)
    lossless = Policy.parse("lossless")
    assert (lossless.targets, lossless.lossless, lossless.transcodes) == ((), True, True)
    raw = Policy.parse("none")
    assert (raw.targets, raw.lossless, raw.transcodes) == ((), False, False)
    assert UNKNOWN_AE_POLICY == CR20
    assert Policy("cr", 30).kind is Compression.CR and Policy("cr", 30).cr == 30.0


@pytest.mark.parametrize("value", ["1", 1, 0.5, "-3", "0", "nan", "inf", math.inf, "twenty",
                                   "", "derived", "cr20", True, None, [20]])
def test_a_bad_policy_is_refused_naming_the_value(value) -> None:
    with pytest.raises(ValueError, match="policy") as refused:
        Policy.parse(value)
    assert repr(value) in str(refused.value)


@pytest.mark.parametrize(("kind", "cr", "said"), [
    (Compression.CR, None, "needs a number cr > 1"),
    (Compression.CR, 1, "finite number > 1"),
    (Compression.CR, math.nan, "finite number > 1"),
    (Compression.CR, "20", "needs a number cr > 1"),
    (Compression.LOSSLESS, 20, "'lossless' policy has no CR"),
    (Compression.PASS_THROUGH, 20, "'none' policy has no CR"),
    ("jpeg", None, "kind is one of"),
])
def test_a_policy_checks_itself(kind, cr, said: str) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        Policy(kind, cr)


def test_a_site_policy_is_a_value(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"sites": [
        {"name": "a", "calling_ae": ["A"], "cr": 20},
        {"name": "b", "calling_ae": ["B"], "cr": 12.5},
        {"name": "c", "calling_ae": ["C"], "cr": "lossless"},
        {"name": "d", "calling_ae": ["D"], "cr": "none"}]}))
    policies = {site.name: site.policy for site in load_config(path).sites}
    assert policies == {"a": CR20, "b": Policy(Compression.CR, 12.5),
                        "c": Policy(Compression.LOSSLESS), "d": Policy(Compression.PASS_THROUGH)}
    path.write_text(yaml.safe_dump({"sites": [{"name": "a", "calling_ae": ["A"], "cr": 1}]}))
    with pytest.raises(ConfigError, match=re.escape("sites.0.cr")):
        load_config(path)


# -- the store ---------------------------------------------------------------------------------
def _receive(store: JobStore, uid: str, study: str = "1.9", site: str = "a",
             policy: Policy = CR20) -> None:
    store.received(sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
                   study_uid=study, calling_ae="MG_A", site=site, policy=policy,
                   spool_path=Path(f"/spool/{uid}.dcm"), size=10)


def _derive(store: JobStore, folder: Path, uid: str, study: str = "1.9", site: str = "a") -> Path:
    path = folder / f"{uid}.dcm"
    path.write_bytes(b"derived")
    store.derived(sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                  study_uid=study, site=site, path=path)
    return path


def test_jobs_carry_a_policy_and_a_kind(tmp_path: Path) -> None:
    with JobStore(tmp_path / "jobs.sqlite") as store:
        _receive(store, "1.1", policy=Policy.parse("lossless"))
        (job,) = store.to_transcode(5)
        assert job == Job("1.1", "a", Policy(Compression.LOSSLESS), ObjectKind.IMAGE,
                          Path("/spool/1.1.dcm"), (), 0, 0)
        store.transcoded("1.1", [tmp_path / "out.dcm"])
        sc = _derive(store, tmp_path, "2.1")
        kinds = {j.sop_instance_uid: (j.kind, j.policy) for j in store.to_forward(5)}
        assert kinds == {"1.1": (ObjectKind.IMAGE, Policy(Compression.LOSSLESS)),
                         "2.1": (ObjectKind.DERIVED, Policy(Compression.PASS_THROUGH))}
        assert store.outputs_by_site() == {"a": [tmp_path / "out.dcm"]}
        assert store.outputs_by_site(ObjectKind.DERIVED) == {"a": [sc]}
        with pytest.raises(TypeError, match=re.escape("Policy.parse(")):
            store.received(sop_instance_uid="1.2", sop_class_uid="1.2", study_uid="1.9",
                           calling_ae="MG_A", site="a", policy="20", spool_path=Path("x"),
                           size=1)


def test_work_handed_to_workers_is_queued_and_taken_back(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = JobStore(path)
    _receive(store, "1.1")
    _receive(store, "1.2")
    assert store.queued("1.1") and not store.queued("1.1")  # handed out once
    assert [j.sop_instance_uid for j in store.to_transcode(5)] == ["1.2"]  # not 1.1: queued
    assert store.counts()["a"][ObjectKind.IMAGE][InstanceState.QUEUED] == 1
    assert queue_depth(store.counts()) == 2

    store.transcoded("1.2", [tmp_path / "1.2.j2k.dcm"])
    assert store.studies_to_infer(stable_seconds=0, views=1) == []  # 1.1 is still in a worker
    store.transcoded("1.1", [tmp_path / "1.1.j2k.dcm"])
    (study,) = store.studies_to_infer(stable_seconds=0, views=2)
    assert study == StudyJob("1.9", "a", (tmp_path / "1.1.j2k.dcm", tmp_path / "1.2.j2k.dcm"))
    assert store.study_queued("1.9") and not store.study_queued("1.9")
    assert store.studies_to_infer(stable_seconds=0, views=2) == []
    assert store.study_states() == {StudyState.QUEUED: 1}
    with pytest.raises(ValueError, match="study_queued"):
        store.study_done("1.9", StudyState.QUEUED)

    # A worker that dies puts its job back; a full disk does too, for later.
    _receive(store, "1.3", study="1.8")
    assert store.queued("1.3")
    assert store.worker_died("1.3") == 1
    assert [j.sop_instance_uid for j in store.to_transcode(5)] == ["1.3"]
    assert store.queued("1.3")
    store.retry_transcode("1.3", retry_at=0, error="disk full")
    assert [j.sop_instance_uid for j in store.to_transcode(5)] == ["1.3"]

    # The node dies with work handed out: the next one takes it back when it starts.
    assert store.queued("1.3")
    store.close()
    with JobStore(path) as store:
        assert store.to_transcode(5) == []  # 1.3 is queued: not offered again
        assert store.requeue_in_flight() == (1, 1)
        assert store.requeue_in_flight() == (0, 0)
        assert store.counts()["a"][ObjectKind.IMAGE][InstanceState.QUEUED] == 0
        assert StudyState.QUEUED not in store.study_states()
        assert [j.sop_instance_uid for j in store.to_transcode(5)] == ["1.3"]
        (again,) = store.studies_to_infer(stable_seconds=0, views=2)
        assert again.study_uid == "1.9"
        assert not store.study_done("1.9")  # not handed out: nothing to finish
        assert store.study_queued("1.9") and store.study_done("1.9")
        assert store.study_states() == {StudyState.INFERRED: 1, StudyState.WAITING: 1}


def test_an_image_that_arrives_while_its_study_is_classified_gets_it_classified_again(
        tmp_path: Path) -> None:
    """The result of an inference started before the image arrived does not mark the study
    inferred: it waits, and is classified again with the new image."""
    with JobStore(tmp_path / "jobs.sqlite") as store:
        _receive(store, "1.1", study="1.9")
        store.transcoded("1.1", [tmp_path / "1.1.dcm"])
        assert store.study_queued("1.9")
        _receive(store, "1.2", study="1.9")  # arrives mid-inference
        assert not store.study_done("1.9")
        assert store.study_states() == {StudyState.WAITING: 1}


# The instances table as the release before `kind` made it (with policy 'derived' for the
# node's own objects); the studies table unchanged.
OLD_SCHEMA = """
CREATE TABLE instances (sop_instance_uid TEXT PRIMARY KEY, sop_class_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL, calling_ae TEXT NOT NULL, site TEXT NOT NULL, policy TEXT NOT NULL,
    spool_path TEXT NOT NULL, bytes INTEGER NOT NULL, state TEXT NOT NULL,
    outputs TEXT NOT NULL DEFAULT '[]', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL, updated_at REAL NOT NULL,
    worker_deaths INTEGER NOT NULL DEFAULT 0);
CREATE TABLE studies (study_uid TEXT PRIMARY KEY, site TEXT NOT NULL, state TEXT NOT NULL,
    last_received_at REAL NOT NULL, error TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL,
    worker_deaths INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0);
INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, calling_ae, site, policy,
    spool_path, bytes, state, outputs, received_at, updated_at) VALUES
    ('1.1', '1.2.840.10008.5.1.4.1.1.1.2', '1.9', 'MG_A', 'a', '20', '/spool/1.1.dcm', 10,
     'done', '["/out/1.1.dcm"]', 1, 1),
    ('1.2', '1.2.840.10008.5.1.4.1.1.1.2', '1.9', 'MG_A', 'a', '20', '/spool/1.2.dcm', 10,
     'transcoded', '["/out/1.2.dcm"]', 2, 2),
    ('2.1', '1.2.840.10008.5.1.4.1.1.7', '1.9', '', 'a', 'derived', '/derived/2.1.dcm', 7,
     'transcoded', '["/derived/2.1.dcm"]', 3, 3);
INSERT INTO studies (study_uid, site, state, last_received_at, updated_at) VALUES
    ('1.9', 'a', 'inferred', 1, 3);
"""


def test_an_older_store_migrates_its_derived_rows_on_open(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(OLD_SCHEMA)

    # Read-only (the audit, `dicomcr status`): nothing changes on disk, it reads as migrated.
    with JobStore.open_readonly(path) as old:
        assert old.outputs_by_site() == {"a": [Path("/out/1.1.dcm"), Path("/out/1.2.dcm")]}
        assert old.counts()["a"][ObjectKind.DERIVED][InstanceState.TRANSCODED] == 1
        assert {j.sop_instance_uid: j.kind for j in old.to_forward(5)} == {
            "1.2": ObjectKind.IMAGE, "2.1": ObjectKind.DERIVED}
        with pytest.raises(StoreError, match="readonly"):  # sqlite3's errors stay in the store
            old.done("1.2")
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert "kind" not in {row[1] for row in db.execute("PRAGMA table_info(instances)")}

    with JobStore(path) as store:  # the node opens it: migrated in place
        jobs = {j.sop_instance_uid: j for j in store.to_forward(5)}
        assert (jobs["2.1"].kind, jobs["2.1"].policy) == (ObjectKind.DERIVED,
                                                          Policy(Compression.PASS_THROUGH))
        assert (jobs["1.2"].kind, jobs["1.2"].policy) == (ObjectKind.IMAGE, CR20)
        counts = store.counts()["a"]
        assert counts[ObjectKind.IMAGE][InstanceState.DONE] == 1
        assert counts[ObjectKind.DERIVED][InstanceState.TRANSCODED] == 1
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT sop_instance_uid, kind, policy FROM instances "
                          "ORDER BY sop_instance_uid").fetchall()
    assert rows == [("1.1", "image", "20"), ("1.2", "image", "20"), ("2.1", "derived", "none")]
    with JobStore(path) as again:  # opening a migrated store again changes nothing
        assert again.counts() == JobStore.open_readonly(path).counts()


def test_a_missing_store_is_not_created_by_a_reader(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no job store"):
        JobStore.open_readonly(tmp_path / "jobs.sqlite")
    assert not (tmp_path / "jobs.sqlite").exists()


# -- dicomcr status ----------------------------------------------------------------------------
def test_status_shows_images_and_derived_objects_apart(tmp_path: Path) -> None:
    from services.cli import app

    storage = tmp_path / "data"
    storage.mkdir()
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"storage": str(storage)},
        "sites": [{"name": "hologic", "calling_ae": ["MG_A"], "cr": 20},
                  {"name": "ge", "calling_ae": ["MG_B"], "cr": "lossless"}]}))
    store = JobStore(storage / "jobs.sqlite")  # held open, as by a running node
    for view in range(4):  # four images sent and forwarded; their study classified
        uid = f"1.{view}"
        _receive(store, uid, site="hologic")
        store.transcoded(uid, [tmp_path / f"{uid}.j2k.dcm"])
        store.done(uid)
    for number in range(5):  # its four SCs and its SR: three forwarded, two waiting
        uid = f"2.{number}"
        _derive(store, tmp_path, uid, site="hologic")
        if number < 3:
            store.done(uid)
    assert store.study_queued("1.9") and store.study_done("1.9")
    _receive(store, "3.1", study="3.9", site="ge", policy=Policy.parse("lossless"))
    assert store.queued("3.1")

    result = CliRunner().invoke(app, ["status", "--config", str(config)])
    store.close()
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines), result.output
    header = next(line for line in lines if "received" in line)
    assert re.findall(r"\w+", header) == ["site", "objects", "received", "queued",
                                          "transcoded", "done", "failed"]
    rows = {tuple(words[:2]): [int(n) for n in words[2:]] for words in
            (re.findall(r"[\w.-]+", line) for line in lines) if words[1:2] in (["images"],
                                                                                 ["derived"])}
    assert rows == {("hologic", "images"): [0, 0, 0, 4, 0],
                    ("hologic", "derived"): [0, 0, 2, 3, 0],
                    ("ge", "images"): [0, 1, 0, 0, 0]}
    assert "studies: waiting 1, inferred 1" in result.output
    assert "queue depth: 3" in result.output  # ge's queued image and the two derived objects


def test_status_without_a_store_says_so(tmp_path: Path) -> None:
    from services.cli import app

    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"node": {"storage": str(tmp_path / "data")}}))
    result = CliRunner().invoke(app, ["status", "--config", str(config)])
    assert result.exit_code == 2 and "no job store" in result.output
    assert not (tmp_path / "data" / "jobs.sqlite").exists()


def test_only_delivered_objects_are_offered_for_deletion(tmp_path: Path) -> None:
    with JobStore(tmp_path / "jobs.sqlite") as store:
        for uid in ("1.1", "1.2", "1.3"):
            _receive(store, uid, study="1.9")
        store.transcoded("1.2", [tmp_path / "1.2.dcm"])  # waiting for its destination
        store.transcoded("1.3", [tmp_path / "1.3.dcm"])
        store.done("1.3")
        store.failed("1.1", "bad")  # failed: kept for a retry
        later = time.time() + 1
        assert [j.sop_instance_uid for j in store.delivered_before(later)] == ["1.3"]
        store.purged("1.3")
        assert store.delivered_before(later) == []
        assert store.outputs_by_site() == {"a": [tmp_path / "1.2.dcm"]}  # only what is kept


# -- dicomcr retry -----------------------------------------------------------------------------
def test_retry_says_which_policy_it_uses_and_offers_the_current_one(tmp_path: Path) -> None:
    """A site's CR changed after an image failed: a retry transcodes at the policy recorded when
    it was received and says so, naming the site's policy now; --current-policy uses that."""
    from services.cli import app

    storage = tmp_path / "data"
    storage.mkdir()
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"node": {"storage": str(storage)},
                                      "sites": [{"name": "a", "calling_ae": ["MG_A"], "cr": 100}]}))
    with JobStore(storage / "jobs.sqlite") as store:
        _receive(store, "1.1")  # received at CR 20, when site a said so
        store.failed("1.1", "bad codestream")
    said = CliRunner().invoke(app, ["retry", "1.1", "--config", str(config)])
    assert said.exit_code == 0, said.output
    assert "retrying image 1.1 at policy 20 (as received; the site's policy is now 100: " \
           "--current-policy uses it)" in " ".join(said.output.split())
    with JobStore(storage / "jobs.sqlite") as store:
        (job,) = store.to_transcode(5)
        assert job.policy == CR20
        store.failed("1.1", "bad again")
    said = CliRunner().invoke(app, ["retry", "--all-failed", "--current-policy", "--config",
                                    str(config)])
    assert said.exit_code == 0 and "retrying image 1.1 at policy 100" in said.output, said.output
    with JobStore(storage / "jobs.sqlite") as store:
        (job,) = store.to_transcode(5)
        assert job.policy == Policy(Compression.CR, 100.0) and job.attempts == 0
    again = CliRunner().invoke(app, ["retry", "1.1", "--config", str(config)])
    assert again.exit_code == 2 and "not failed" in again.output
