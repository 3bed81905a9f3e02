"""Shared fixture: the synthetic demo corpus (3 sessions, 8 clips each) with log-mel features."""

import pytest

from emoflow.audio.features import extract_features
from emoflow.audio.logmel import LogMelConfig
from emoflow.corpora.synthetic import generate_demo_corpus, read_demo
from emoflow.storage import open_store


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    generate_demo_corpus(root / "corpus", sessions=3, speakers_per_session=1, utterances_per_speaker=8)
    store = open_store(str(root / "store"))
    utts = extract_features(read_demo(root / "corpus"), store, LogMelConfig())
    return utts, store, root
