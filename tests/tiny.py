"""Tiny models for unit tests: a byte-level BPE tokenizer with a ChatML template and a
randomly initialised Llama built from a config, both made in memory in well under a second."""

from __future__ import annotations

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is the capital of France? Paris is the capital.",
    "positive negative great terrible movie film review",
    "你好，世界。这部电影很好看。",
    "0123456789 !?.,:;'\"()[]{}<>/-_+=*&^%$#@~`|\\",
]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    core.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def tiny_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 32):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        initializer_range=0.3,  # the default 0.02 collapses greedy output to one repeated token
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def tiny_loaded(seed: int = 0, name: str = "tiny-llama"):
    """A LoadedModel around a fresh tiny model, fp32 on CPU."""
    from bot.models import LoadedModel

    tokenizer = tiny_tokenizer()
    return LoadedModel(model=tiny_model(tokenizer, seed), tokenizer=tokenizer, name=name, dtype="float32", device="cpu")


def save_tiny(folder, seed: int = 0) -> str:
    """Write a tiny model and tokenizer as a normal transformers folder; return its path."""
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer, seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def with_lora_adapters(loaded, names: list[str], rank: int = 4):
    """Wrap a LoadedModel's model in peft with randomly initialised LoRA adapters (one seed each),
    so every adapter answers differently from the base. Returns the same LoadedModel, eval mode."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = lambda: LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)  # noqa: E731
    torch.manual_seed(100)
    model = get_peft_model(loaded.model, config(), adapter_name=names[0])
    for seed, name in enumerate(names[1:], start=101):
        torch.manual_seed(seed)
        model.add_adapter(name, config())
    loaded.model = model.eval()
    return loaded
