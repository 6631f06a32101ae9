"""Test configuration.

TRITON_INTERPRET must be in the environment before triton is imported — and torch
imports triton as soon as a transformers model is built — so it is set here, on the
first lines, before anything else is imported. On a machine with an NVIDIA GPU the
variable is left unset and the kernel tests run natively on CUDA.
"""

import contextlib
import glob
import os
from pathlib import Path

if "TRITON_INTERPRET" not in os.environ and not glob.glob("/dev/nvidia[0-9]*"):
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default=None,
        help="device for kernel tests: cuda when available, else cpu (Triton interpreter)",
    )


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device kernel tests run on: --device, else CUDA when present, else CPU."""
    name = request.config.getoption("--device")
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@pytest.fixture(autouse=True)
def _reference_backend_unless_kernels(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests not marked ``kernels`` use the pure-torch ops (fast on CPU); kernel tests pick
    their backend themselves. Scoped to each test through monkeypatch, not a global."""
    if request.node.get_closest_marker("kernels") is None:
        monkeypatch.setenv("FASTROBUST_BACKEND", "torch")


@contextlib.contextmanager
def one_torch_thread():
    """torch intra-op threads set to 1 inside the block (restored after). Tiny models gain nothing
    from a second thread, and on a shared 2-core machine OpenMP's spin-waiting makes a busy second
    thread cost up to 40x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """The test runs with one torch thread (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    with one_torch_thread():
        yield


# --- trainer fixtures (tiny BERT, a small PAWS-X-layout folder) -------------------------------


PAWSX_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pawsx"


@pytest.fixture(scope="session")
def fixture_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT whose vocabulary covers the words of the PAWS-X fixture (tests/fixtures/pawsx)."""
    words = set()
    for f in PAWSX_FIXTURE.glob("*.tsv"):
        for line in f.read_text(encoding="utf-8").splitlines():
            for text in line.split("\t")[:2]:
                words.update(text.split())
    return _build_tiny_bert(tmp_path_factory.mktemp("fixture_bert"), sorted(words))


def _write_pawsx_folder(root, n_train=64, n_dev=16, n_test=16, languages=("en", "de", "fr"), seed=0):
    """A PAWS-X-layout folder: paraphrase = same words reordered, non-paraphrase = one word changed.

    Test sets are parallel across languages (row i has the same label everywhere), as G-XLT needs;
    another language's word is the English word with a language prefix.
    """
    import random

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]

    def make(n):
        rows = []
        for _ in range(n):
            s1 = rng.sample(words, rng.randint(4, 8))
            label = rng.randint(0, 1)
            s2 = list(s1)
            if label:
                i, j = rng.sample(range(len(s2)), 2)
                s2[i], s2[j] = s2[j], s2[i]
            else:
                s2[rng.randrange(len(s2))] = rng.choice(words)
            rows.append((s1, s2, label))
        return rows

    def write(path, rows, lang):
        tr = (lambda w: w) if lang == "en" else (lambda w: f"{lang}{w}")
        with open(path, "w", encoding="utf-8") as f:
            for s1, s2, y in rows:
                f.write(" ".join(map(tr, s1)) + "\t" + " ".join(map(tr, s2)) + f"\t{y}\n")

    root.mkdir(parents=True, exist_ok=True)
    write(root / "train-en.tsv", make(n_train), "en")
    dev, test = make(n_dev), make(n_test)
    for lang in languages:
        write(root / f"dev-{lang}.tsv", dev, lang)
        write(root / f"test-{lang}.tsv", test, lang)
    synonyms = {w: [words[(i + 1) % len(words)]] for i, w in enumerate(words[:20])}
    (root / "synonyms.json").write_text(__import__("json").dumps(synonyms))
    vocab = set(words)
    for lang in languages:
        if lang != "en":
            vocab |= {f"{lang}{w}" for w in words}
    return sorted(vocab)


def _build_tiny_bert(folder, vocab_words, hidden=32, layers=2, heads=2):
    """A randomly initialised tiny BERT + a WordLevel tokenizer with BERT's pair template."""
    from transformers import BertConfig, BertForMaskedLM

    from fastrobust.data.synthetic import SPECIAL_TOKENS, word_tokenizer

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + list(vocab_words))}
    fast = word_tokenizer(vocab)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_pawsx(tmp_path_factory: pytest.TempPathFactory):
    """(data folder, tiny BERT folder): a 64-example PAWS-X-layout task in en/de/fr and a model for it."""
    root = tmp_path_factory.mktemp("tiny_pawsx")
    vocab = _write_pawsx_folder(root / "data")
    _build_tiny_bert(root / "model", vocab)
    return root / "data", root / "model"
