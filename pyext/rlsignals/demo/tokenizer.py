"""The demo model's tokenizer: one token per character, plus chat tokens.

Built with the ``tokenizers`` library and wrapped as a transformers
``PreTrainedTokenizerFast``, so ``save_pretrained`` / ``AutoTokenizer``
round-trip it (the saved ``tokenizer_config.json`` names
``PreTrainedTokenizerFast``, and the model config is a Llama one, so no
model-specific tokenizer class replaces it on loading).

Vocabulary (ids are fixed by this file, so the shipped model and a rebuilt
tokenizer agree):

    0 <|pad|>   1 <|im_start|>   2 <|im_end|> (also eos)   3 <unk>
    4 system    5 user           6 assistant   (whole-word added tokens)
    7...        "\\n" and the 95 printable ASCII characters, one token each

Every digit is its own token, which is what arithmetic wants; any character
outside printable ASCII becomes <unk>. The chat template is ChatML:

    <|im_start|>{role}\\n{content}<|im_end|>\\n   per message, and
    <|im_start|>assistant\\n                       as the generation prompt.

A reply therefore ends with <|im_end|>, which is the eos token, so generation
stops there by itself.
"""

from __future__ import annotations

import string

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

PAD, BOS, EOS, UNK = "<|pad|>", "<|im_start|>", "<|im_end|>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
ROLE_TOKENS = ("system", "user", "assistant")
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))
assert set(string.printable) - set("\t\r\x0b\x0c") == set(CHARACTERS)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def vocabulary() -> dict[str, int]:
    """Token -> id, in the fixed order described in the module docstring."""
    tokens = list(SPECIAL_TOKENS) + list(ROLE_TOKENS) + list(CHARACTERS)
    return {token: i for i, token in enumerate(tokens)}


def build_backend() -> Tokenizer:
    """The raw ``tokenizers.Tokenizer``: WordLevel over single characters."""
    tok = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=UNK))
    # Every character is its own pre-token (spaces and newlines included).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    # Role names are whole tokens wherever they appear, which keeps the chat
    # template's overhead to three tokens per message.
    tok.add_tokens([AddedToken(t, special=False, normalized=False, single_word=False) for t in ROLE_TOKENS])
    return tok


def build_tokenizer(model_max_length: int = 256):
    """The transformers tokenizer: pad <|pad|>, eos <|im_end|>, ChatML template,
    no bos/eos added by ``__call__`` (the template writes every special token)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_backend(),
        pad_token=PAD, eos_token=EOS, unk_token=UNK, bos_token=None,
        model_max_length=model_max_length, padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
