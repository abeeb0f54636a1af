"""A bad node.yaml is refused with one line per problem, each naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomcr.config import ConfigError, load_config

PACS = "destinations:\n  pacs: {host: 127.0.0.1, port: 4242, ae_title: ORTHANC}\n"


def _refusal(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    return str(refused.value).splitlines()


def test_a_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    lines = _refusal(tmp_path, "node: {port: 11112\nsites: [\n")
    assert lines == [f"{tmp_path / 'node.yaml'}: line 2, column 6: not valid YAML: "
                     "expected ',' or '}', but got ':'"]


@pytest.mark.parametrize(("text", "said"), [
    (PACS + "forward: {to: archive}\n",
     "forward.to: expected one of the destinations ['pacs'] (got 'archive')"),
    (PACS + "forward: {to: pacs}\ninference: {send_to: orthanc}\n",
     "inference.send_to: expected one of the destinations ['pacs'] (got 'orthanc')"),
    (PACS + "forward: {to: pacs}\nsites:\n  - {name: a, calling_ae: [MG_A], cr: 20}\n"
            "  - {name: b, calling_ae: [MG_B, MG_A], cr: 20}\n",
     "sites.1.calling_ae: 'MG_A' is already a calling AE of site 'a'"),
])
def test_a_cross_reference_is_reported_at_its_key(tmp_path: Path, text: str, said: str) -> None:
    """Not at "(top level)": the check runs over the whole file, the key is the one to edit."""
    assert _refusal(tmp_path, text) == [f"{tmp_path / 'node.yaml'}: {said}"]


@pytest.mark.parametrize(("value", "got"), [("twenty", "'twenty'"), ("-3", "-3"), ("1", "1"),
                                            ("[20]", "[20]"), ("Lossy", "'Lossy'")])
def test_a_bad_cr_is_one_line(tmp_path: Path, value: str, got: str) -> None:
    """One problem, one line: not one line per member of the union (a number, 'lossless', 'none')."""
    lines = _refusal(tmp_path, f"sites:\n  - {{name: a, calling_ae: [MG_A], cr: {value}}}\n")
    assert lines == [f"{tmp_path / 'node.yaml'}: sites.0.cr: expected a compression ratio > 1, "
                     f"'lossless' or 'none' (pass-through) (got {got})"]


def test_each_problem_is_its_own_line(tmp_path: Path) -> None:
    lines = _refusal(tmp_path, "node: {workers: many, port: 0}\nsites:\n"
                               "  - {name: a, calling_ae: [MG_A], cr: twenty}\n")
    path = tmp_path / "node.yaml"
    assert lines == [f"{path}: node.port: Input should be greater than or equal to 1 (got 0)",
                     f"{path}: node.workers: expected 'auto' or a number of processes 1..256 "
                     "(got 'many')",
                     f"{path}: sites.0.cr: expected a compression ratio > 1, 'lossless' or 'none' "
                     "(pass-through) (got 'twenty')"]


def test_good_values_still_load(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(PACS + "forward: {to: pacs}\nnode: {workers: 4}\nsites:\n"
                    "  - {name: a, calling_ae: [MG_A], cr: 12.5}\n"
                    "  - {name: b, calling_ae: [MG_B], cr: lossless}\n"
                    "  - {name: c, calling_ae: [MG_C], cr: none}\n")
    config = load_config(path)
    assert config.node.workers == 4 and config.forward.to == "pacs"
    assert [site.cr for site in config.sites] == [12.5, "lossless", "none"]
    assert load_config(None).node.workers == "auto"
