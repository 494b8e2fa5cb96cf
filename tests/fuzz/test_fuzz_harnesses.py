"""The fuzz harnesses (fuzz/) stay runnable: every seed and some mutations replay clean.

Without atheris: each harness's ``one_input`` runs over its seed corpus
(``fuzz/corpus/<harness>/``) and the synthetic seeds, then over a few hundred
mutations of them made with a fixed random seed, so a change in pgwire that
breaks a harness (or that a harness catches) fails here. The ``slow`` test
runs ``fuzz/run.py`` under atheris for a few hundred inputs per harness and
checks its report.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fuzz import HARNESSES, scram_client, scram_server, seeds
from fuzz.replay import load

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "fuzz" / "corpus"
MUTATIONS = 300
INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, ord("Z"), ord("E"), ord("S"), ord("Q"), ord("d"))


def corpus(harness: str) -> list[bytes]:
    """The committed seeds of ``harness`` and its synthetic ones."""
    directory = CORPUS / harness
    files = sorted(directory.iterdir()) if directory.is_dir() else []
    return [f.read_bytes() for f in files] + [d for h, d in seeds.synthetic() if h == harness]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one to four bytes flipped, replaced, inserted or deleted."""
    buffer = bytearray(data or b"\x00")
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(buffer))
        operation = rng.randrange(4)
        if operation == 0:
            buffer[position] ^= 1 << rng.randrange(8)
        elif operation == 1:
            buffer[position] = rng.choice(INTERESTING)
        elif operation == 2:
            buffer.insert(position, rng.randrange(256))
        elif len(buffer) > 1:
            del buffer[position]
    return bytes(buffer)


def replay(one_input: Callable[[bytes], None], inputs: list[bytes]) -> None:
    for data in inputs:
        try:
            one_input(data)
        except Exception as exc:
            raise AssertionError(f"the harness failed on input {data!r}") from exc


@pytest.mark.parametrize("harness", HARNESSES)
def test_every_seed_replays_clean(harness: str) -> None:
    inputs = corpus(harness)
    assert len(inputs) >= 4, f"fuzz/corpus/{harness} is missing: run python -m fuzz.capture"
    replay(load(harness), inputs)


@pytest.mark.parametrize("harness", HARNESSES)
def test_mutated_seeds_replay_clean(harness: str) -> None:
    rng = random.Random(f"pgwire-fuzz-{harness}")
    inputs = corpus(harness)
    replay(load(harness), [mutate(rng.choice(inputs), rng) for _ in range(MUTATIONS)])


def test_the_scram_harnesses_reach_a_successful_exchange() -> None:
    # Without it, a harness whose fixed nonce or secret drifted would only ever fail early.
    for harness, data in seeds.synthetic():
        if harness == "scram_server":
            assert scram_server.exchange(data)
    assert any(scram_client.exchange(d) for h, d in seeds.synthetic() if h == "scram_client")


def test_the_corpus_stays_small() -> None:
    files = [f for f in CORPUS.rglob("*") if f.is_file()]
    assert all(f.stat().st_size <= 4096 for f in files)
    assert sum(f.stat().st_size for f in files) < 500_000


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_runner_fuzzes_every_harness_and_reports(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (pip install 'pgwire[fuzz]')")
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "fuzz.run", "--runs", "300", "--crash-dir",
         str(tmp_path / "crashes"), "--json", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=840, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    results = {r["harness"]: r for r in json.loads(report.read_text())}
    assert sorted(results) == sorted(HARNESSES)
    for harness, result in results.items():
        assert result["inputs"] >= 300, (harness, result)
        assert result["cov"] > 0 and result["ft"] > 0, (harness, result)
        assert result["crashes"] == [], (harness, result)
    for harness in HARNESSES:
        assert harness in done.stdout
