"""The special tokens every llmpipe tokenizer carries, written once.

`<|endoftext|>` separates documents and ends every generated text and fine-tuning response (the
BOS/EOS of exported tokenizers); `<|pad|>` pads rows; `<|user|>` and `<|assistant|>` mark the
turns of the chat format; `<|unk|>` is the character tokenizer's unknown character.
"""

EOT_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
UNK_TOKEN = "<|unk|>"
DEFAULT_SPECIAL_TOKENS = (EOT_TOKEN, PAD_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)
