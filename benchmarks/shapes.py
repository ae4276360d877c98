"""Random-weight models of real shapes, for the benchmarks (no download, no network).

Each shape is a Hugging Face config; the model gets the architecture's own random
initialisation (``TransformerBridge.boot_transformers(..., load_weights=False)``) and
is loaded through ``unlearn_lens.load_model``, so it runs the code paths a trained
model of that shape runs, at the same speed.
"""

from __future__ import annotations

import torch

SHAPES = {
    # GPT-NeoX, as EleutherAI/pythia-1.4b: 24 layers, d_model 2048, 16 heads, d_mlp 8192, GeLU
    "pythia-1.4b": (
        "gpt_neox",
        dict(
            vocab_size=50304,
            hidden_size=2048,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=8192,
            max_position_embeddings=2048,
            rotary_pct=0.25,
            use_parallel_residual=True,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
    # OPT, as facebook/opt-1.3b: 24 layers, d_model 2048, 32 heads, d_mlp 8192, ReLU
    "opt-1.3b": (
        "opt",
        dict(
            vocab_size=50272,
            hidden_size=2048,
            num_hidden_layers=24,
            num_attention_heads=32,
            ffn_dim=8192,
            max_position_embeddings=2048,
            word_embed_proj_dim=2048,
            do_layer_norm_before=True,
            activation_function="relu",
            bos_token_id=2,
            eos_token_id=2,
            pad_token_id=1,
        ),
    ),
    # GPT-2 small: 12 layers, d_model 768, 12 heads, d_mlp 3072
    "gpt2-small": (
        "gpt2",
        dict(
            vocab_size=50257,
            n_embd=768,
            n_layer=12,
            n_head=12,
            n_inner=3072,
            n_positions=1024,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
    # a Llama of 1B parameters: 16 layers, d_model 2048, d_mlp 8192 (gated), 32 query and 8 key/value heads
    "llama-1b": (
        "llama",
        dict(
            vocab_size=128256,
            hidden_size=2048,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=8192,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
    # a small GPT-NeoX to check the scripts themselves in seconds
    "tiny": (
        "gpt_neox",
        dict(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=2048,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
}


def build(shape: str, device: str, dtype: torch.dtype, folder: str):
    """A random-weight model of ``shape`` as a TransformerBridge, loaded through ``unlearn_lens.load_model``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoConfig, PreTrainedTokenizerFast

    import unlearn_lens as ul

    model_type, fields = SHAPES[shape]
    AutoConfig.for_model(model_type, **fields).save_pretrained(folder)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        ["def f(x):\n    return x\n", "A short sentence."] * 10,
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    ).save_pretrained(folder)
    torch.manual_seed(0)
    bridge = TransformerBridge.boot_transformers(folder, load_weights=False)
    bridge = bridge.to(device=device, dtype=dtype).eval()
    return ul.load_model(bridge, device=device), fields["vocab_size"]


def random_rows(n_tokens: int, seq_len: int, vocab: int):
    import unlearn_lens as ul

    gen = torch.Generator().manual_seed(0)
    n_rows = -(-n_tokens // (seq_len - 1))
    tokens = torch.randint(3, vocab, (n_rows, seq_len), generator=gen)
    tokens[:, 0] = 0
    valid = torch.ones_like(tokens, dtype=torch.bool)
    valid[:, 0] = False
    return ul.TokenSet(tokens, valid)
