"""Tokenizers: the byte-level default, trained byte-level BPE and local ``tokenizer.json`` files.

This module owns turning text into token ids and back. Every tokenizer follows the :class:`Tokenizer`
protocol (``encode``, ``encode_batch``, ``decode``, ``vocab_size``, ``eos_id``, ``identity``, ``save``):

* :class:`ByteTokenizer` - 256 ids, a token per UTF-8 byte; the ids are exactly the raw bytes that
  :mod:`farsync.data.corpus` reads, so it reproduces today's byte-level runs. It needs no library.
* :class:`BPETokenizer` - a ``tokenizers`` byte-level BPE (GPT-2 style: every byte is in the base alphabet,
  so any text encodes, and decoding inverts encoding). :func:`train_bpe` trains one on texts or files and
  caches it; :func:`load_tokenizer_json` reads a local ``tokenizer.json``.

``save(directory)`` writes ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``,
which ``transformers.AutoTokenizer.from_pretrained(directory)`` (``PreTrainedTokenizerFast``) loads
offline. :func:`make_tokenizer` picks one from a config string. Problems raise :class:`TokenizerError`
(a ``ValueError``) naming the path or setting and what is expected.

``tokenizers`` is an optional dependency (``pip install farsync[hf]``), imported only when needed.
References: the ``tokenizers`` docs (https://huggingface.co/docs/tokenizers) and GPT-2's byte-to-unicode
table (Radford et al., 2019, ``encoder.py``), re-implemented in :func:`bytes_to_unicode`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from farsync.data.corpus import TextCorpus

__all__ = [
    "EOS_TOKEN",
    "TOKENIZER_FILES",
    "BPETokenizer",
    "ByteTokenizer",
    "Tokenizer",
    "TokenizerError",
    "bytes_to_unicode",
    "default_cache_dir",
    "load_tokenizer_json",
    "make_tokenizer",
    "tokenize_corpus",
    "train_bpe",
]

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
"""The special end-of-text token every trained BPE tokenizer gets (id 0)."""

TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
"""The files :meth:`Tokenizer.save` writes."""

_BPE_CACHE_VERSION = 1


class TokenizerError(ValueError):
    """A tokenizer that cannot be made or loaded; the message names the path or setting."""


@runtime_checkable
class Tokenizer(Protocol):
    """What farsync needs from a tokenizer."""

    @property
    def vocab_size(self) -> int:
        """Number of ids; every id :meth:`encode` returns is below it."""
        ...

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-text token put between documents, or ``None`` when there is none."""
        ...

    @property
    def identity(self) -> str:
        """A short string that changes whenever the text-to-ids mapping changes (for cache keys)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of each text."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD."""
        ...

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write :data:`TOKENIZER_FILES` into ``directory`` (created if needed); returns their paths."""
        ...


def default_cache_dir() -> Path:
    """``$FARSYNC_CACHE_DIR`` if set, else ``~/.cache/farsync``: where trained tokenizers and token arrays go."""
    configured = os.environ.get("FARSYNC_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "farsync"


def _tokenizers() -> ModuleType:
    try:
        import tokenizers
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise TokenizerError("BPE tokenizers need the tokenizers library: pip install farsync[hf]") from error
    return tokenizers


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character (the byte-level BPE alphabet).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map, in order, to ``chr(256 + n)``.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


def _write_atomically(path: Path, text: str) -> None:
    # A temporary file in the same directory then a rename: concurrent writers never expose a torn file.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _save_hf_files(
    directory: str | os.PathLike[str], tokenizer_json: str, eos_token: str | None
) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    special: dict[str, Any] = {"eos_token": eos_token} if eos_token is not None else {}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "model_max_length": 1_000_000_000,
        **special,
    }
    contents = {
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }
    paths = []
    for name in TOKENIZER_FILES:
        _write_atomically(out / name, contents[name])
        paths.append(out / name)
    return paths


class ByteTokenizer:
    """One token per UTF-8 byte: ids ``0..255`` equal the byte values, as in :mod:`farsync.data.corpus`."""

    @property
    def vocab_size(self) -> int:
        """Always 256."""
        return 256

    @property
    def eos_id(self) -> int | None:
        """``None``: raw bytes have no end-of-text token (documents are concatenated as they are)."""
        return None

    @property
    def identity(self) -> str:
        """``"bytes-v1"``."""
        return "bytes-v1"

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text``."""
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of each text."""
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """The text whose UTF-8 bytes are ``ids``; raises :class:`TokenizerError` for an id outside 0..255."""
        try:
            data = bytes(ids)
        except (ValueError, TypeError) as error:
            raise TokenizerError(f"byte token ids must be integers in 0..255 ({error})") from error
        return data.decode("utf-8", errors="replace")

    def to_json(self) -> str:
        """The equivalent ``tokenizers`` JSON: a byte-level BPE with the 256 bytes and no merges."""
        tokenizers = _tokenizers()
        alphabet = bytes_to_unicode()
        model = tokenizers.models.BPE(vocab={alphabet[byte]: byte for byte in range(256)}, merges=[])
        tokenizer = tokenizers.Tokenizer(model)
        tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tokenizer.decoder = tokenizers.decoders.ByteLevel()
        text: str = tokenizer.to_str()
        return text

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write HF tokenizer files that give the same ids (needs the ``tokenizers`` library)."""
        return _save_hf_files(directory, self.to_json(), eos_token=None)

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class BPETokenizer:
    """A ``tokenizers.Tokenizer`` (normally byte-level BPE) behind the :class:`Tokenizer` protocol."""

    def __init__(self, tokenizer: Any, eos_token: str | None = EOS_TOKEN) -> None:
        self.tokenizer = tokenizer
        """The wrapped ``tokenizers.Tokenizer``."""
        self._json: str = tokenizer.to_str()
        self._eos_token = (
            eos_token if eos_token is not None and tokenizer.token_to_id(eos_token) is not None else None
        )
        self._identity = "tokenizer-" + hashlib.sha256(self._json.encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> BPETokenizer:
        """Load a ``tokenizer.json``; see :func:`load_tokenizer_json` for the checked version."""
        return load_tokenizer_json(path)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        size: int = self.tokenizer.get_vocab_size(with_added_tokens=True)
        return size

    @property
    def eos_id(self) -> int | None:
        """Id of :data:`EOS_TOKEN` (or the ``eos_token`` given), ``None`` if the vocabulary lacks it."""
        if self._eos_token is None:
            return None
        token_id: int = self.tokenizer.token_to_id(self._eos_token)
        return token_id

    @property
    def identity(self) -> str:
        """``tokenizer-`` plus a hash of the full tokenizer JSON."""
        return self._identity

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without added special tokens."""
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of each text (encoded in parallel by ``tokenizers``)."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens kept, so ``decode(encode(text)) == text`` for byte-level BPE."""
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=False)
        return text

    def to_json(self) -> str:
        """The tokenizer's ``tokenizer.json`` text."""
        return self._json

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
        return _save_hf_files(directory, self._json, eos_token=self._eos_token)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, identity={self._identity!r})"


def load_tokenizer_json(path: str | os.PathLike[str], eos_token: str | None = EOS_TOKEN) -> BPETokenizer:
    """Load a local ``tokenizer.json`` file, or the one inside a directory (e.g. an exported model).

    ``eos_token`` names the token put between documents (ignored when the vocabulary lacks it).
    Raises :class:`TokenizerError` naming the path when it is missing or not a valid ``tokenizers`` file.
    """
    given = Path(path).expanduser()
    file = given / "tokenizer.json" if given.is_dir() else given
    if not file.is_file():
        raise TokenizerError(
            f"tokenizer path {str(given)!r} does not exist or holds no tokenizer.json; expected a "
            "tokenizer.json file (from the tokenizers library) or a directory containing one"
        )
    tokenizers = _tokenizers()
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(file))
    except Exception as error:  # the Rust bindings raise a bare Exception
        raise TokenizerError(
            f"tokenizer file {str(file)!r} is not a valid tokenizers JSON file ({error}); "
            "expected the tokenizer.json a tokenizers.Tokenizer saves"
        ) from error
    return BPETokenizer(tokenizer, eos_token=eos_token)


def _file_identity(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _bpe_cache_key(
    texts: Sequence[str] | None, files: Sequence[Path] | None, vocab_size: int, min_frequency: int
) -> str:
    digest = hashlib.sha256()
    header = {
        "version": _BPE_CACHE_VERSION,
        "tokenizers": _tokenizers().__version__,
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "special_tokens": [EOS_TOKEN],
        "files": [_file_identity(path) for path in files] if files is not None else None,
    }
    digest.update(json.dumps(header, sort_keys=True).encode("utf-8"))
    for text in texts or ():
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()[:24]


def train_bpe(
    texts: Sequence[str] | None = None,
    files: Sequence[str | os.PathLike[str]] | None = None,
    *,
    vocab_size: int,
    cache_dir: str | os.PathLike[str] | None = None,
    min_frequency: int = 2,
) -> BPETokenizer:
    """Train a byte-level BPE tokenizer on ``texts`` or on text ``files`` (exactly one), or reuse the cached one.

    The result has :data:`EOS_TOKEN` as id 0, the 256 byte symbols, then up to ``vocab_size`` in total
    learned merges (fewer when the text runs out of pairs seen ``min_frequency`` times, so check
    ``vocab_size`` on the result). It is cached as ``<cache_dir>/bpe-<key>.json`` where the key hashes the
    training text identity (each text's content; each file's resolved path, size and modification time),
    ``vocab_size``, ``min_frequency`` and the ``tokenizers`` version; a later call with the same key loads
    that file instead of training. ``cache_dir`` defaults to ``default_cache_dir() / "tokenizers"``.
    """
    if (texts is None) == (files is None):
        raise TokenizerError("train_bpe needs exactly one of texts and files")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
        raise TokenizerError(
            f"BPE vocab_size must be an integer >= 257 (256 byte symbols + {EOS_TOKEN}), got {vocab_size!r}"
        )
    if isinstance(texts, str):
        raise TokenizerError("train_bpe texts must be a sequence of strings, not one string")
    paths = None
    if files is not None:
        paths = [Path(file).expanduser() for file in files]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing or not paths:
            raise TokenizerError(f"BPE training files not found: {', '.join(missing) or '(none given)'}")
    elif not any(texts or ()):
        raise TokenizerError("BPE training needs non-empty texts")
    tokenizers = _tokenizers()
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "tokenizers"
    cached = directory / f"bpe-{_bpe_cache_key(texts, paths, vocab_size, min_frequency)}.json"
    if cached.is_file():
        logger.info("reusing the cached BPE tokenizer %s", cached)
        return load_tokenizer_json(cached)
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if paths is not None:
        tokenizer.train([str(path) for path in paths], trainer=trainer)
    else:
        tokenizer.train_from_iterator(texts, trainer=trainer)
    result = BPETokenizer(tokenizer)
    _write_atomically(cached, result.to_json())
    logger.info("trained a BPE tokenizer of %d ids, cached at %s", result.vocab_size, cached)
    return result


def make_tokenizer(
    kind: str,
    *,
    vocab_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    texts: Sequence[str] | None = None,
    files: Sequence[str | os.PathLike[str]] | None = None,
) -> Tokenizer:
    """The tokenizer a config string names.

    * ``"bytes"`` - :class:`ByteTokenizer`;
    * ``"bpe"`` - :func:`train_bpe` on ``texts`` or ``files`` with ``vocab_size`` (cached in ``cache_dir``);
    * anything else - a path to a ``tokenizer.json`` or a directory holding one (:func:`load_tokenizer_json`).
    """
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        if vocab_size is None:
            raise TokenizerError("tokenizer 'bpe' needs a vocab_size")
        if texts is None and files is None:
            raise TokenizerError("tokenizer 'bpe' needs training texts or files")
        return train_bpe(texts, files, vocab_size=vocab_size, cache_dir=cache_dir)
    if not Path(kind).expanduser().exists():
        raise TokenizerError(
            f"unknown tokenizer {kind!r}; expected 'bytes', 'bpe', or a path to a tokenizer.json file or "
            "a directory holding one"
        )
    return load_tokenizer_json(kind)


_CORPUS_CACHE_VERSION = 1


def _token_dtype(vocab_size: int) -> Any:
    import numpy as np

    return np.int16 if vocab_size <= 2**15 else np.int32


def tokenize_corpus(
    corpus: TextCorpus, tokenizer: Tokenizer, *, cache_dir: str | os.PathLike[str] | None = None
) -> TextCorpus:
    """The same corpus with every file's UTF-8 text encoded by ``tokenizer`` (cached on disk).

    Each training file becomes its token ids followed by the end-of-text id (when the tokenizer has one);
    the validation bytes are decoded and encoded as one text. The result is a
    :class:`~farsync.data.corpus.TextCorpus` of integer tensors that the partitioners and batch iterators
    take as they take bytes. It is cached as ``<cache_dir>/corpus-<key>.npz`` (default
    ``default_cache_dir() / "datasets"``), the key hashing the tokenizer's identity and every file's path
    and bytes, so workers started after a launcher tokenized the corpus read it instead of encoding again.
    """
    import numpy as np
    import torch

    from farsync.data.corpus import TextCorpus

    digest = hashlib.sha256(f"{_CORPUS_CACHE_VERSION}:{tokenizer.identity}:{tokenizer.eos_id}".encode())
    for relpath, data in corpus.train_files:
        digest.update(relpath.encode("utf-8") + b"\0")
        digest.update(data.numpy().tobytes())
    digest.update(b"\0val\0" + corpus.val_tokens.numpy().tobytes())
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "datasets"
    cached = directory / f"corpus-{digest.hexdigest()[:24]}.npz"
    dtype = _token_dtype(tokenizer.vocab_size)
    if cached.is_file():
        with np.load(cached) as stored:
            train, offsets, val = stored["train"], stored["offsets"], stored["val"]
    else:
        texts = [bytes(data.numpy()).decode("utf-8", errors="replace") for _, data in corpus.train_files]
        eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        encoded = [np.asarray(ids + eos, dtype=dtype) for ids in tokenizer.encode_batch(texts)]
        offsets = np.cumsum([0] + [len(ids) for ids in encoded]).astype(np.int64)
        train = np.concatenate(encoded) if encoded else np.empty(0, dtype=dtype)
        val_text = bytes(corpus.val_tokens.numpy()).decode("utf-8", errors="replace")
        val = np.asarray(tokenizer.encode(val_text), dtype=dtype)
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{cached.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, train=train, offsets=offsets, val=val)
            os.replace(temporary, cached)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        logger.info("tokenized the corpus into %d training tokens, cached at %s", train.size, cached)
    train_tensor = torch.from_numpy(np.ascontiguousarray(train))
    files = [
        (relpath, train_tensor[int(offsets[i]) : int(offsets[i + 1])])
        for i, (relpath, _) in enumerate(corpus.train_files)
    ]
    return TextCorpus(
        train_files=[(relpath, tokens) for relpath, tokens in files if tokens.numel() > 0],
        val_tokens=torch.from_numpy(np.ascontiguousarray(val)),
        val_paths=list(corpus.val_paths),
    )
