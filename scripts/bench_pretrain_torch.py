#!/usr/bin/env python3
"""Baseline for the stage-1 compression training step: LLM2Comp's step done
the way the authors' PyTorch code does it, timed on the CPU or on one CUDA
GPU.

What "the authors' way" means here (read off their models.py / pretext
script; this is a re-implementation, not their code):
- two full model copies: the encoder, wrapped by PEFT LoRA (r 16, alpha 32,
  dropout 0.05 on q/v/o/gate/up/down_proj) with its WHOLE input-embedding
  matrix trainable after resizing it to V + k rows (rows V..V+k-1 are the
  memory tokens), and the decoder, a frozen deep copy; the teacher (KL) is
  that frozen copy too. The authors also resize the decoder, which gives its
  LM head k extra randomly initialised output rows, so their softmax runs
  over V + k classes; we keep the decoder at V (as METHOD.md and the Rust
  step do) so the losses are comparable; the cost difference is k rows;
- the encoder is run as the causal-LM class, so it also computes LM-head
  logits over every encoder position that nothing uses (`--lean-encoder`
  runs only the inner transformer instead);
- the encoder is bidirectional: a 4-D boolean mask [B, 1, S, S] that lets
  every query see every non-padding key (right padding; the authors patch
  the Llama class instead, same effect), so the whole batch is one forward;
  the memory states are hidden_states[-1] at the k memory positions;
- decoder and teacher are batched with right padding and a 2-D mask, and
  materialise full [B, S, V] logits; RC / NLL loss: cross-entropy over the
  target tokens (token-level mean over the batch); KL: log_softmax of both,
  `kl_div(..., log_target=True)` summed over the vocabulary, mean over the
  passage's suffix positions, mean over passages; teacher under no_grad;
- `--adapter FILE` starts from given memory rows and LoRA matrices (keys as
  in crates/compress/tests/fixtures/golden/*/adapter.safetensors) instead
  of PEFT's init (A random, B zero) and resized-embedding rows;
- AdamW (lr 1e-4, weight decay 1e-5) over the LoRA matrices and the encoder
  embedding matrix, gradient-norm clipping 2.0; model in train mode (LoRA
  dropout active).
Indexing follows our METHOD.md / crates/compress (decoder input
[BOS, mem, tgt_1..tgt_{L-1}], logits rows k..k+L-1; teacher reads
[BOS] t_1..t_{T-1}, rows s..T-1), so the loss matches the Rust step's.

Cross-checked against scripts/golden_compress.py (per-passage, own LoRA,
no PEFT, no padding): run on the tiny fixture models with `--model
crates/backbone/tests/fixtures/golden/<arch> --batch <its passages>
--adapter .../adapter.safetensors --lora-r 4 --lora-alpha 8 --lora-dropout 0`,
the first step's loss equals golden.json's for rc, nll and kl to 2.5e-7
relative in f32, and to 4e-16 in `--dtype f64` with golden_compress's
float64 RMSNorm/RoPE patches applied in-process.

Input: `--batch FILE`, JSON {"bos": id, "k": 8, "passages": [{"ids": [...],
"split": s}, ...]} (ids = t_1..t_T without BOS), or `--data FILE` (one passage
a line; tokenised without special tokens, truncated to --max-tokens, lines
shorter than 24 tokens skipped, first --passages kept, split = T // 2;
`--write-batch OUT` saves that batch in the --batch format).

Model: `--gguf FILE` (transformers' GGUF loader, dequantised to --dtype),
`--model DIR` (a Hugging Face checkpoint) or `--config FILE` (a Hugging Face
config.json, e.g. a Llama one: the model is built with
`AutoModelForCausalLM.from_config` in --dtype after `torch.manual_seed(--seed)`,
so its weights are random but the same on every run with the same seed and
torch version; there is no tokenizer, so this mode takes --batch or --batches,
not --data).

GPU mode (`--device cuda`): models, optimizer state and batch tensors live on
cuda:0; each step is timed between two `torch.cuda.synchronize()` calls.
Once models, optimizer and batch are on the device, the peak-memory counter
is reset and `torch.cuda.memory_allocated()` is recorded as the base; after
the last step `torch.cuda.max_memory_allocated()` is the peak (warm-up steps
included, so the AdamW state created at the first optimizer step counts).
The result reports `peak_device_bytes` (absolute) and
`peak_device_bytes_over_base` (peak - base); both are null on the CPU.
`--device cuda` without a usable CUDA device exits with a message.

Output (stdout and `--json OUT`): step seconds (median, mean, each), steps/s,
text tokens/s and forward tokens/s, peak RSS (getrusage ru_maxrss, MiB,
model loading included), the loss of every step, torch version, threads.
Token counts: `text_tokens` = sum of T over the batch (t_1..t_T);
`forward_tokens` = encoder inputs (1 + |enc_text| + k) + decoder inputs
(k + L) + teacher inputs (T, KL only), unpadded; `padded_forward_tokens` =
the same with every tensor at its padded length (what is computed).
A last stdout line `BENCH {...}` (json.dumps of a dict, after the prefix
`BENCH `) summarises the run: impl "torch", name (--bench-name), ms (median
step milliseconds), tokens_per_s (text tokens/s), peak_bytes (peak device
bytes over base, null on the CPU), peak_bytes_abs (absolute peak, null on the
CPU), loss (the first timed step's loss; null if it is not finite).

usage: bench_pretrain_torch.py (--gguf F.gguf | --model DIR | --config cfg.json)
       (--batch b.json | --batches b.jsonl | --data text.txt) [--objective kl]
       [--steps 5] [--warmup 1] [--threads 2] [--dtype f32|bf16|f64]
       [--device cpu|cuda] [--bench-name NAME] [--json OUT]
"""
import argparse
import copy
import json
import math
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj", "up_proj", "gate_proj"]


def from_config(path, dtype, seed):
    """A randomly initialised causal LM from a config.json (no tokenizer)."""
    from transformers import AutoConfig

    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    with open(path) as f:
        fields = json.load(f)
    if "model_type" not in fields:
        raise SystemExit(f"--config {path}: no model_type field")
    cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
    # transformers 5.x takes dtype=, 4.x torch_dtype= (an unknown keyword reaches
    # the model's __init__ and raises TypeError); reseed before each try
    for kw in ("dtype", "torch_dtype"):
        torch.manual_seed(seed)
        try:
            model = AutoModelForCausalLM.from_config(cfg, **{kw: dtype})
            break
        except TypeError:
            if kw == "torch_dtype":
                raise
    if next(model.parameters()).dtype != dtype:
        model = model.to(dtype)
    return model


def load(args, dtype):
    if args.config:
        return from_config(args.config, dtype, args.seed), None
    if args.gguf:
        path = os.path.abspath(args.gguf)
        kw = dict(gguf_file=os.path.basename(path))
        src = os.path.dirname(path)
    else:
        kw, src = {}, args.model
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw)
    tok = AutoTokenizer.from_pretrained(src, **kw) if args.data else None
    return model, tok


def load_adapter(enc, path, vocab, k):
    """Overwrites the memory rows and every LoRA matrix (same start as the Rust step)."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    named = dict(enc.named_parameters())
    with torch.no_grad():
        emb = enc.base_model.model.model.embed_tokens.weight
        emb[vocab : vocab + k] = tensors.pop("memory_tokens").to(emb.dtype)
        for key, t in tensors.items():
            name = key.replace(".weight", ".default.weight")
            named[name].copy_(t.to(named[name].dtype))
        missing = [n for n in named if "lora_" in n and n.replace(".default.weight", ".weight") not in tensors]
        if missing:
            raise SystemExit(f"--adapter {path}: no values for {missing[:3]}...")


def batch_from_text(args, tok, bos):
    passages = []
    with open(args.data, encoding="utf-8") as f:
        for line in f:
            ids = tok(line.strip(), add_special_tokens=False)["input_ids"][: args.max_tokens]
            if len(ids) >= 24:
                passages.append({"ids": ids, "split": len(ids) // 2})
            if len(passages) == args.passages:
                break
    return {"bos": bos, "k": args.k, "passages": passages}


def right_pad(rows, pad):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def up(t):
    """Losses in at least float32 (bf16 logits are widened; f64 ones kept)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class Step:
    """Builds the padded tensors once; `loss()` runs encoder, decoder, teacher."""

    def __init__(self, batch, objective, vocab, pad, lean):
        self.k, self.bos, self.objective, self.lean = batch["k"], batch["bos"], objective, lean
        mem_ids = list(range(vocab, vocab + self.k))
        enc_rows, dec_rows, teach_rows, self.sites, self.splits, self.lens = [], [], [], [], [], []
        for p in batch["passages"]:
            ids, s = p["ids"], p["split"]
            enc_text, tgt = (ids, ids) if objective == "rc" else (ids[:s], ids[s:])
            enc_rows.append([self.bos] + enc_text + mem_ids)
            self.sites.append(1 + len(enc_text))
            dec_rows.append([self.bos] + tgt[:-1])
            teach_rows.append([self.bos] + ids[:-1])
            self.splits.append(s)
            self.lens.append(len(tgt))
        self.enc_ids, enc_mask = right_pad(enc_rows, pad)
        key_ok = enc_mask.bool()
        self.enc_mask4 = key_ok[:, None, None, :].expand(-1, 1, key_ok.shape[1], -1).contiguous()
        self.dec_ids, dec_mask = right_pad(dec_rows, pad)
        # the decoder's input is 1 + k + (L - 1) long: BOS, memory, then the targets
        self.dec_mask = torch.cat(
            [dec_mask[:, :1], torch.ones(len(dec_rows), self.k, dtype=torch.long), dec_mask[:, 1:]], 1
        )
        self.targets = torch.full(self.dec_mask.shape, -100, dtype=torch.long)
        for i, p in enumerate(batch["passages"]):
            tgt = p["ids"] if objective == "rc" else p["ids"][p["split"] :]
            self.targets[i, self.k : self.k + len(tgt)] = torch.tensor(tgt)
        self.teach_ids, self.teach_mask = right_pad(teach_rows, pad)
        T = [len(p["ids"]) for p in batch["passages"]]
        self.text_tokens = sum(T)
        self.forward_tokens = sum(len(r) for r in enc_rows) + sum(self.k + n for n in self.lens)
        self.padded_forward_tokens = self.enc_ids.numel() + self.dec_mask.numel()
        if objective == "kl":
            self.forward_tokens += sum(T)
            self.padded_forward_tokens += self.teach_ids.numel()

    def to(self, device):
        for name in ("enc_ids", "enc_mask4", "dec_ids", "dec_mask", "targets", "teach_ids", "teach_mask"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def loss(self, enc, dec):
        if self.lean:
            hidden = enc.base_model.model.model(
                input_ids=self.enc_ids, attention_mask=self.enc_mask4
            ).last_hidden_state
        else:
            hidden = enc(
                input_ids=self.enc_ids, attention_mask=self.enc_mask4, output_hidden_states=True
            ).hidden_states[-1]
        mem = torch.stack([hidden[i, s : s + self.k] for i, s in enumerate(self.sites)])
        emb = dec.get_input_embeddings()(self.dec_ids)
        embeds = torch.cat([emb[:, :1], mem.to(emb.dtype), emb[:, 1:]], 1)
        logits = dec(inputs_embeds=embeds, attention_mask=self.dec_mask).logits
        if self.objective != "kl":
            return F.cross_entropy(
                up(logits.flatten(0, 1)), self.targets.flatten(), ignore_index=-100
            )
        with torch.no_grad():
            teacher = dec(input_ids=self.teach_ids, attention_mask=self.teach_mask).logits
        kls = []
        for i, (s, n) in enumerate(zip(self.splits, self.lens)):
            student = F.log_softmax(up(logits[i, self.k : self.k + n]), -1)
            target = F.log_softmax(up(teacher[i, s : s + n]), -1)
            kls.append(F.kl_div(student, target, log_target=True, reduction="none").sum(-1).mean())
        return torch.stack(kls).mean()


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf")
    src.add_argument("--model")
    src.add_argument("--config", help="Hugging Face config.json: random weights (seeded by --seed), "
                     "no tokenizer; needs --batch or --batches")
    inp = ap.add_mutually_exclusive_group(required=True)
    inp.add_argument("--batch")
    inp.add_argument("--batches", help="JSONL, one batch a line (llm2comp pretrain --dump-batches); "
                     "step i replays line i (cycling), so both sides run identical batches")
    inp.add_argument("--data")
    ap.add_argument("--passages", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--write-batch")
    ap.add_argument("--objective", choices=["kl", "nll", "rc"], default="kl")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["f32", "bf16", "f64"], default="f32")
    ap.add_argument("--lean-encoder", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32.0)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--adapter", help="safetensors with memory_tokens and PEFT lora_A/B keys to start from")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--bench-name", default="compress step", help="name in the BENCH line")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.config and args.data:
        ap.error("--config builds a model without a tokenizer: give --batch or --batches, not --data")
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    device = torch.device("cuda:0" if cuda else "cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f64": torch.float64}[args.dtype]

    t0 = time.perf_counter()
    base, tok = load(args, dtype)
    base.to(device)
    vocab = base.config.vocab_size
    batches = None
    if args.batches:
        with open(args.batches) as f:
            batches = [json.loads(line) for line in f if line.strip()]
        batch = batches[0]
    elif args.batch:
        with open(args.batch) as f:
            batch = json.load(f)
    else:
        bos = tok.bos_token_id if tok.bos_token_id is not None else base.config.bos_token_id
        batch = batch_from_text(args, tok, bos)
        if args.write_batch:
            with open(args.write_batch, "w") as f:
                json.dump(batch, f)
    k = batch["k"]
    pad = base.config.pad_token_id if base.config.pad_token_id is not None else base.config.eos_token_id
    if pad is None:  # a bare config may name neither; padded positions are masked out anyway
        pad = 0

    dec = copy.deepcopy(base)
    for p in dec.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=TARGETS,
        task_type=TaskType.FEATURE_EXTRACTION,
    )
    enc = get_peft_model(base, lora)
    enc.resize_token_embeddings(vocab + k)
    enc.base_model.model.model.embed_tokens.weight.requires_grad = True
    if args.adapter:
        load_adapter(enc, args.adapter, vocab, k)
    enc.to(device)
    enc.train()
    dec.eval()
    params = [p for p in enc.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5)
    steps = [Step(b, args.objective, vocab, pad, args.lean_encoder).to(device) for b in (batches or [batch])]
    load_s = time.perf_counter() - t0
    base_bytes = peak_bytes = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_bytes = torch.cuda.memory_allocated()

    times, losses, text_tokens, forward_tokens = [], [], [], []
    for i in range(args.warmup + args.steps):
        step = steps[i % len(steps)]
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = step.loss(enc, dec)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        losses.append(loss.item())
        if i >= args.warmup:
            times.append(dt)
            text_tokens.append(step.text_tokens)
            forward_tokens.append(step.forward_tokens)
        print(f"step {i} ({'warm-up' if i < args.warmup else 'timed'}): {dt:.3f} s, loss {loss.item():.6f}",
              flush=True)

    if cuda:
        torch.cuda.synchronize()
        peak_bytes = torch.cuda.max_memory_allocated()

    med = statistics.median(times)
    result = {
        "objective": args.objective,
        "model": args.gguf or args.model or args.config,
        "dtype": args.dtype,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else None,
        "attn_implementation": getattr(base.config, "_attn_implementation", None),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lean_encoder": args.lean_encoder,
        "passages": len(batch["passages"]),
        "passage_lengths": [len(p["ids"]) for p in batch["passages"]],
        "k": k,
        "trainable_params": n_trainable,
        "load_seconds": load_s,
        "warmup_steps": args.warmup,
        "steps": args.steps,
        "step_seconds": times,
        "median_step_seconds": med,
        "mean_step_seconds": statistics.mean(times),
        "steps_per_second": 1.0 / med,
        "text_tokens": sum(text_tokens),
        "forward_tokens": sum(forward_tokens),
        "padded_forward_tokens": step.padded_forward_tokens,
        "text_tokens_per_second": sum(text_tokens) / sum(times),
        "forward_tokens_per_second": sum(forward_tokens) / sum(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "base_device_bytes": base_bytes,
        "peak_device_bytes": peak_bytes,
        "peak_device_bytes_over_base": None if peak_bytes is None else peak_bytes - base_bytes,
        "losses": losses,
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("step_seconds", "losses")}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    first = losses[args.warmup]
    bench = {
        "impl": "torch",
        "name": args.bench_name,
        "ms": med * 1e3,
        "tokens_per_s": result["text_tokens_per_second"],
        "peak_bytes": result["peak_device_bytes_over_base"],
        "peak_bytes_abs": peak_bytes,
        "loss": first if math.isfinite(first) else None,
    }
    print("BENCH " + json.dumps(bench), flush=True)


if __name__ == "__main__":
    main()
