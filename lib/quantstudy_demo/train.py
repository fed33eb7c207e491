"""Train the embedded demo model: a small Llama support assistant, from scratch, on a CPU.

``make demo-model`` runs :func:`train_demo_model`: it trains a byte-level BPE tokenizer on the
generic (Wikipedia) and in-domain (support conversations + help-centre articles) training
splits, then a Llama-architecture causal LM on the same text, and saves both as an ordinary
Hugging Face model folder (``AutoModelForCausalLM.from_pretrained(path)`` loads it).

Choices that matter for the study, each recorded in the model card:
- every training window starts with BOS (attention sinks, where real LLMs grow their
  massive activations, form on a fixed first token);
- no weight decay on norm gains and embeddings;
- every linear layer's input width is a multiple of 128, the AWQ group size;
- weights are saved in float16, like the 16-bit model a team serves.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from quantstudy import data
from quantstudy.paths import resolve

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
# Renders exactly like quantstudy.data.format_conversation, so chat-template users and
# role-prefixed users see the same text.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}User: {% elif m['role'] == 'assistant' %}Assistant: {% else %}System: {% endif %}"
    "{{ m['content'] if m['content'] is defined else m['text'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass(frozen=True)
class DemoConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 1024
    num_layers: int = 6
    num_heads: int = 4
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 2000
    lr: float = 4e-3  # attempt 2: twice attempt 1's rate grew the outlier channels AWQ protects
    min_lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    generic_share: float = 0.35  # share of training windows drawn from Wikipedia text
    eval_every: int = 200
    eval_windows: int = 48
    seed: int = 0
    threads: int = 0  # 0 = torch default
    notes: tuple[str, ...] = field(default_factory=tuple)


CONFIGS: dict[str, DemoConfig] = {
    "demo": DemoConfig(),
    # Seconds-long run that exercises the same code (tests).
    "tiny": DemoConfig(
        vocab_size=384,
        hidden_size=128,
        intermediate_size=256,
        num_layers=2,
        num_heads=2,
        seq_len=64,
        batch_size=4,
        steps=6,
        warmup_steps=2,
        eval_every=3,
        eval_windows=4,
    ),
}


# --------------------------------------------------------------------------- corpus
def training_texts(
    max_wiki: int | None = None, max_conversations: int | None = None, data_dir: str | Path = "data/demo"
) -> tuple[list[str], list[str], list[str], list[str]]:
    """(generic_train, indomain_train, generic_eval, indomain_eval) texts."""
    wiki = data.load_wiki()
    generic_train = [t for t, s in zip(wiki["text"], wiki["split"]) if s == "pretrain"]
    generic_eval = [t for t, s in zip(wiki["text"], wiki["split"]) if s == "eval"]
    data_dir = resolve(data_dir)
    convs = data.read_conversations(data_dir / "conversations.jsonl")
    indomain_train = [data.format_conversation(c["turns"]) for c in convs if c["metadata"].get("split") == "train"]
    indomain_eval = [data.format_conversation(c["turns"]) for c in convs if c["metadata"].get("split") == "eval"]
    articles_path = data_dir / "help_articles.jsonl"
    if articles_path.is_file():
        with open(articles_path, encoding="utf-8") as fh:
            indomain_train += [json.loads(line)["text"] for line in fh if line.strip()]
    if max_wiki is not None:
        generic_train, generic_eval = generic_train[:max_wiki], generic_eval[: max(2, max_wiki // 8)]
    if max_conversations is not None:
        indomain_train, indomain_eval = (
            indomain_train[:max_conversations],
            indomain_eval[: max(2, max_conversations // 8)],
        )
    return generic_train, indomain_train, generic_eval, indomain_eval


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE (no unknown tokens), saved as a Hugging Face fast tokenizer with BOS added."""
    # lazy: importing transformers takes seconds, and only training needs it
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast  # seconds to import; loaded only where a model is

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=4096
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _windows(docs: list[list[int]], seq_len: int, bos: int, eos: int) -> torch.Tensor:
    """Pack documents (EOS-separated) into windows of seq_len tokens, each starting with BOS."""
    body = seq_len - 1
    stream: list[int] = []
    for ids in docs:
        stream.extend(ids)
        stream.append(eos)
    n = len(stream) // body
    if n == 0:
        raise ValueError(f"not enough text for one window of {seq_len} tokens")
    t = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), t], dim=1)


def _encode(tokenizer, texts: list[str], desc: str) -> list[list[int]]:
    out = []
    for i in tqdm(range(0, len(texts), 512), desc=f"tokenize {desc}", leave=False):
        enc = tokenizer(texts[i : i + 512], add_special_tokens=False)["input_ids"]
        out.extend(enc)
    return out


def build_model(cfg: DemoConfig, tokenizer):
    """An untrained Llama of the config's shape for the tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM  # lazy, as in train_tokenizer

    for width in (cfg.hidden_size, cfg.intermediate_size):
        if width % 128:
            raise ValueError(f"layer input width {width} is not a multiple of the AWQ group size 128")
    lcfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=max(512, cfg.seq_len),
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(lcfg)


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # Norm gains and embeddings are left free: decaying them suppresses the per-channel
        # scale differences (outlier channels) that real LLMs develop.
        (no_decay if p.ndim < 2 or "embed" in name or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def _eval_loss(model, windows: torch.Tensor, batch: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        x = windows[i : i + batch]
        out = model(input_ids=x, labels=x)
        n = x.numel() - x.shape[0]
        total += out.loss.item() * n
        count += n
    model.train()
    return total / count


def _lr_at(cfg: DemoConfig, step: int) -> float:
    """Linear warm-up, then cosine decay from ``cfg.lr`` to ``cfg.min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


def _training_windows(
    cfg: DemoConfig, tokenizer, g_train: list[str], d_train: list[str], g_eval: list[str], d_eval: list[str]
) -> dict[str, torch.Tensor]:
    """BOS-led token windows: ``generic`` and ``in_domain`` (documents shuffled) to train on,
    ``generic_eval`` and ``in_domain_eval`` (at most ``cfg.eval_windows`` each) to evaluate on."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    rng = random.Random(cfg.seed)
    g_docs, d_docs = _encode(tokenizer, g_train, "generic"), _encode(tokenizer, d_train, "in-domain")
    rng.shuffle(g_docs)
    rng.shuffle(d_docs)
    return {
        "generic": _windows(g_docs, cfg.seq_len, bos, eos),
        "in_domain": _windows(d_docs, cfg.seq_len, bos, eos),
        "generic_eval": _windows(_encode(tokenizer, g_eval, "generic eval"), cfg.seq_len, bos, eos)[: cfg.eval_windows],
        "in_domain_eval": _windows(_encode(tokenizer, d_eval, "in-domain eval"), cfg.seq_len, bos, eos)[
            : cfg.eval_windows
        ],
    }


def _train_steps(model, opt, cfg: DemoConfig, win: dict[str, torch.Tensor]) -> tuple[list[dict], int, float]:
    """Run ``cfg.steps`` optimizer steps on mixed generic/in-domain batches, evaluating every
    ``cfg.eval_every``; returns (curve, tokens seen, start time of training)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n_generic = round(cfg.batch_size * cfg.generic_share)
    curve: list[dict] = []
    tokens_seen = 0
    t_train = time.time()
    model.train()
    bar = tqdm(range(cfg.steps), desc="train demo model")
    for step in bar:
        gi = torch.randint(len(win["generic"]), (n_generic,), generator=gen)
        di = torch.randint(len(win["in_domain"]), (cfg.batch_size - n_generic,), generator=gen)
        x = torch.cat([win["generic"][gi], win["in_domain"][di]])
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens_seen += x.numel()
        elapsed = time.time() - t_train
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens_seen / elapsed:.0f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            gl = _eval_loss(model, win["generic_eval"], cfg.batch_size)
            dl = _eval_loss(model, win["in_domain_eval"], cfg.batch_size)
            curve.append(
                {
                    "step": step + 1,
                    "tokens": tokens_seen,
                    "train_loss": round(loss.item(), 4),
                    "generic_eval_ppl": round(math.exp(gl), 3),
                    "indomain_eval_ppl": round(math.exp(dl), 3),
                    "minutes": round(elapsed / 60, 2),
                }
            )
            tqdm.write(
                f"step {step + 1}: train loss {loss.item():.3f}  eval ppl generic {math.exp(gl):.2f}"
                f"  in-domain {math.exp(dl):.3f}"
            )
    return curve, tokens_seen, t_train


def train_demo_model(
    config_name: str = "demo",
    out_dir: str | Path = "models/demo-support-lm",
    data_dir: str | Path = "data/demo",
    overrides: dict | None = None,
    max_wiki: int | None = None,
    max_conversations: int | None = None,
) -> dict:
    """Train tokenizer + model and save them; return the training record (also saved as JSON)."""
    if config_name not in CONFIGS:
        raise ValueError(f"unknown demo config {config_name!r}; choose one of {sorted(CONFIGS)}")
    cfg = replace(CONFIGS[config_name], **(overrides or {}))
    out_dir = resolve(out_dir)
    data_dir = resolve(data_dir)
    if not (data_dir / "conversations.jsonl").is_file():
        raise FileNotFoundError(f"{data_dir / 'conversations.jsonl'} not found; run `make demo-data` first")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    g_train, d_train, g_eval, d_eval = training_texts(max_wiki, max_conversations, data_dir)
    tokenizer = train_tokenizer(g_train + d_train, cfg.vocab_size)
    win = _training_windows(cfg, tokenizer, g_train, d_train, g_eval, d_eval)

    model = build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    curve, tokens_seen, t_train = _train_steps(model, opt, cfg, win)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.torch_dtype = "float16"
    model.half().save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    record = {
        "config_name": config_name,
        "config": asdict(cfg),
        "parameters": n_params,
        "tokens_seen": tokens_seen,
        "train_windows": {"generic": len(win["generic"]), "in_domain": len(win["in_domain"])},
        "train_wall_s": round(time.time() - t_train, 1),
        "total_wall_s": round(time.time() - t0, 1),
        "tokens_per_s": round(tokens_seen / (time.time() - t_train), 1),
        "curve": curve,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out_dir / "training_record.json").write_text(json.dumps(record, indent=2))
    return record
