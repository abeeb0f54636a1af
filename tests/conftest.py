"""Shared fixtures: small phantom cohorts, and the real DICOM peers the tests run."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import RabbitMQ

from dicomcr.audit.detectability import CACHE_ENV
from dicomcr.phantom import CohortSpec, write_cohort


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small studies of both vendors (2 normal, 1 benign, 1 malignant), written once."""
    out = tmp_path_factory.mktemp("small-cohort")
    write_cohort(CohortSpec(n_studies=4, seed=11, size="small", vendor="mixed"), out)
    return out


@pytest.fixture(scope="module")
def _rabbitmq_of_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    broker = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    yield broker
    broker.close()


@pytest.fixture
def rabbitmq(_rabbitmq_of_module: RabbitMQ) -> RabbitMQ:
    """One RabbitMQ for the test module (it takes about 6 s to start), running when a test
    begins: a test that stopped or killed it and did not start it again leaves it to be started
    here. Queues and messages persist from test to test; give each test its own queue names."""
    _rabbitmq_of_module.start()
    return _rabbitmq_of_module


@pytest.fixture
def rabbitmq_factory(tmp_path: Path) -> Iterator[Callable[..., RabbitMQ]]:
    """make(name="rabbitmq", **options) -> a RabbitMQ of this test's own in tmp_path/name (see
    LocalRabbitMQ for the options); each is closed, with its epmd, when the test ends."""
    made: list[RabbitMQ] = []

    def make(name: str = "rabbitmq", **options) -> RabbitMQ:
        made.append(RabbitMQ(tmp_path / name, **options))
        return made[-1]

    yield make
    for broker in made:
        broker.close()


@pytest.fixture(scope="session")
def detectability_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's observer cache, named by $DICOMCR_DETECTABILITY_CACHE while the session runs
    (so that every audit of the session, in this process or a child, fills and reads it)."""
    folder = tmp_path_factory.mktemp("detectability-cache")
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before
