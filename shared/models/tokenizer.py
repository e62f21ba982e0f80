"""Byte-level BPE tokenizer for ``tiny-llama`` (Llama-3-like special tokens and chat format).

Training uses the ``tokenizers`` library only and is deterministic: the byte alphabet is
fixed (``ByteLevel.alphabet()``), documents are fed in corpus order and BPE breaks count
ties on pair ids, which derive from that fixed order. ``train_tokenizer`` is cheap
(~1 s for the shipped corpus), so tests may call it with a small vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BOS = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
PAD = "<|pad|>"
START_HEADER = "<|start_header|>"
END_HEADER = "<|end_header|>"
EOT = "<|eot|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, END_OF_TEXT, PAD, START_HEADER, END_HEADER, EOT)
DEFAULT_VOCAB_SIZE = 8192

# Llama-3-like: bos first, then every message as header + content + <|eot|>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header|>' + message['role'] + '<|end_header|>\\n' + message['content']"
    " + '<|eot|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header|>assistant<|end_header|>\\n' }}{% endif %}"
)


def iter_documents(corpus_text: str) -> Iterator[str]:
    """Yield the corpus documents (separated by blank lines) in file order."""
    for doc in corpus_text.split("\n\n"):
        doc = doc.strip("\n")
        if doc:
            yield doc


def train_tokenizer(corpus_text: str, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE :class:`tokenizers.Tokenizer` on ``corpus_text``.

    The special tokens get ids 0..5 in :data:`SPECIAL_TOKENS` order; a post-processor
    prepends ``<|begin_of_text|>`` when encoding with ``add_special_tokens=True``.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_documents(corpus_text), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A",
                pair=f"{BOS} $A {BOS} $B",
                special_tokens=[(BOS, bos_id)],
            ),
        ]
    )
    return tok


def wrap_tokenizer(tok: Tokenizer, model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """Wrap a trained tokenizer as ``PreTrainedTokenizerFast`` with the chat template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        additional_special_tokens=[END_OF_TEXT, START_HEADER, END_HEADER],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )


def save_tokenizer(hf_tok: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Save tokenizer files into ``out_dir``; the chat template stays in tokenizer_config.json."""
    hf_tok.save_pretrained(str(out_dir), save_jinja_files=False)
