#!/usr/bin/env python3
"""Golden values for LLM2Comp's stage-1 compression step (loss and gradients
for the RC, NLL and KL objectives), computed with Hugging Face `transformers`
in float64, independently of crates/compress, for its Rust tests.

Generated with transformers 5.24.0, torch 2.15.0 (CPU), numpy 2.4.6,
safetensors 0.8.0. Regenerate (overwrites the fixtures; the numpy seeds make
every input reproducible):

    /work/venv/bin/python scripts/golden_compress.py   # ~15 min on 2 busy cores (the FD checks)

Models: the tiny fixtures crates/backbone/tests/fixtures/golden/llama (Llama-3
RoPE scaling, untied LM head) and .../golden/llama_tied (plain RoPE, tied
head), V = 97, H = 32, 2 layers, 4 query heads on 2 KV heads, loaded with
`LlamaForCausalLM.from_pretrained(dtype=torch.float64)`.

Inputs (numpy seed per architecture): k = 3 memory rows (normal, same std as
the model's embedding rows); LoRA r = 4, alpha = 8 (scale 2) on q_proj,
v_proj, o_proj, gate_proj, up_proj, down_proj of every layer, A [r, in] and
B [out, r] both non-zero and small; three passages of 23, 31 and 40 token ids
in [3, V) (no BOS; BOS is prepended by the step) with split points in
[10, T - 10]. Memory rows and LoRA matrices are rounded to float32, saved as
crates/compress/tests/fixtures/golden/<arch>/adapter.safetensors (keys
`memory_tokens` [k, H] and PEFT names
`base_model.model.model.layers.{l}.{self_attn|mlp}.{proj}.lora_{A|B}.weight`),
and exactly those f32 values, widened, are used in the float64 computation.

The step (docs: /work/shared/METHOD.md, stage 1):
- encoder: a copy of the base model with LoRA (y = W x + (alpha/r) B A x, no
  dropout) and BIDIRECTIONAL attention over `[BOS] enc_text m_1..m_k`; the
  memory states are `last_hidden_state` (after the final norm) at the k memory
  positions. The bidirectional mask is a 4-D boolean all-True mask
  [1, 1, S, S], which transformers passes through unchanged to SDPA (a 4-D
  mask short-circuits its mask creation, and SDPA then runs with
  is_causal=False). Checked at run time: changing the last text token changes
  the encoder output at position 0 (it would not under a causal mask), and the
  same code with a lower-triangular 4-D mask reproduces the default causal
  forward exactly.
- decoder: the base model, no LoRA, causal, inputs_embeds
  `[emb(BOS), mem_1..mem_k, emb(tgt_1)..emb(tgt_{L-1})]`, logits at rows
  k..k+L-1.
- rc: enc_text = tgt = t_1..t_T. nll / kl: enc_text = t_1..t_s,
  tgt = t_{s+1}..t_T. rc / nll loss: cross-entropy summed over every target
  token of the batch divided by their number. kl: teacher = base model, causal,
  on `[BOS] t_1..t_{T-1}`, logits at rows s..T-1, no grad;
  loss = mean over passages of (mean over the passage's L positions of
  sum_v p_teacher (log p_teacher - log p_student)).

True float64: transformers' Llama computes RMSNorm, RoPE and (eager) softmax
in float32 even for a float64 model. This script patches LlamaRMSNorm and
LlamaRotaryEmbedding to keep the input dtype (same formulas; the float64
inverse frequencies are recomputed here and asserted equal to transformers'
float32 ones within 1e-6), uses the SDPA attention (float64 throughout) and
computes the losses itself, so nothing is rounded to float32.

Self-check (run every time, asserted): for every objective, the gradient
w.r.t. `memory_tokens` passes torch.autograd.gradcheck (float64 central
differences over the whole step, eps 1e-6, atol 1e-7, rtol 1e-5), and our own
central differences (eps 1e-5) over every element of `memory_tokens` and of
layer 0's v_proj lora_A agree with autograd to <= 1e-7 + 1e-5 * max|grad|
(measured: 1e-11 .. 3.5e-10 absolute, gradients ~0.02 .. 0.17); the measured
differences are stored under "self_check" in golden.json.

golden.json fields: generator, model (fixture dir relative to the repo root),
adapter (file name beside golden.json), dtype, bos_id, vocab_size,
hidden_size, k, memory_token_ids, lora {r, alpha, scale, dropout, targets},
passages [{ids (t_1..t_T, no BOS), split}], objectives {rc|nll|kl: {loss,
passage_losses (per passage: its token-mean CE, or its KL),
memory_states_passage0 {shape [k, H], values}, grads {<adapter key>: {shape,
values}}}}, self_check. Every tensor is {shape, values}, values flattened
row-major, 15 significant digits.
"""
import copy
import json
import math
import pathlib

import numpy as np
import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import LlamaForCausalLM
from transformers.models.llama import modeling_llama

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = "crates/backbone/tests/fixtures/golden"
OUT = ROOT / "crates/compress/tests/fixtures/golden"

ARCHS = {"llama": 101, "llama_tied": 202}  # architecture -> numpy seed
K = 3
R = 4
ALPHA = 8.0
TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LENGTHS = [23, 31, 40]
OBJECTIVES = ["rc", "nll", "kl"]
DIGITS = 15


# ---------------------------------------------------------------- float64 patches
def rmsnorm_keep_dtype(self, hidden_states):
    """LlamaRMSNorm without the round trip through float32."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def rotary_keep_dtype(self, x, position_ids):
    """LlamaRotaryEmbedding computing the angles in the buffer's dtype (float64 here)."""
    freqs = position_ids[..., None].to(self.inv_freq.dtype) * self.inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (
        emb.sin() * self.attention_scaling
    ).to(x.dtype)


def inv_freq_f64(cfg):
    """RoPE inverse frequencies in float64 (default and Llama-3 scaled)."""
    rp = cfg.rope_parameters
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    inv = 1.0 / (rp["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    if rp["rope_type"] == "llama3":
        factor, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
        old = rp["original_max_position_embeddings"]
        out = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:
                out.append(f)
            elif wavelen > old / lo:
                out.append(f / factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append((1 - smooth) * f / factor + smooth * f)
        inv = np.array(out)
    else:
        assert rp["rope_type"] == "default", rp
    return torch.tensor(inv, dtype=torch.float64)


def load_model(arch):
    model = LlamaForCausalLM.from_pretrained(
        ROOT / MODELS / arch, dtype=torch.float64, attn_implementation="sdpa"
    ).eval()
    rot = model.model.rotary_emb
    inv = inv_freq_f64(model.config)
    theirs = rot.inv_freq.double()
    assert torch.allclose(inv, theirs, rtol=1e-6, atol=0), (inv, theirs)
    rot.inv_freq = inv
    assert rot.attention_scaling == 1.0
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------- LoRA
class LoraLinear(torch.nn.Module):
    """A frozen linear layer plus the side path (alpha/r) x A^T B^T.

    A and B are looked up by name in a shared dict at every call, so the
    finite-difference checks can swap one tensor without rebuilding the model.
    """

    def __init__(self, base, params, key_a, key_b, scale):
        super().__init__()
        self.base, self.params, self.key_a, self.key_b, self.scale = base, params, key_a, key_b, scale

    def forward(self, x):
        a, b = self.params[self.key_a], self.params[self.key_b]
        return self.base(x) + self.scale * ((x @ a.T) @ b.T)


def lora_key(layer, proj, ab):
    group = "mlp" if proj in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"base_model.model.model.layers.{layer}.{group}.{proj}.lora_{ab}.weight"


def make_encoder(base, params):
    """Deep copy of the base model with every target projection wrapped in LoRA
    reading its matrices from `params` (a dict the caller may update)."""
    enc = copy.deepcopy(base)
    for l, layer in enumerate(enc.model.layers):
        for proj in TARGETS:
            parent = layer.mlp if proj in ("gate_proj", "up_proj", "down_proj") else layer.self_attn
            lin = getattr(parent, proj)
            setattr(
                parent,
                proj,
                LoraLinear(lin, params, lora_key(l, proj, "A"), lora_key(l, proj, "B"), ALPHA / R),
            )
    return enc


# ---------------------------------------------------------------- inputs
def make_inputs(model, seed):
    rng = np.random.default_rng(seed)
    cfg = model.config
    V, H = cfg.vocab_size, cfg.hidden_size
    emb_std = model.model.embed_tokens.weight.std().item()
    tensors = {"memory_tokens": rng.normal(0.0, emb_std, (K, H))}
    for l, layer in enumerate(model.model.layers):
        for proj in TARGETS:
            parent = layer.mlp if proj in ("gate_proj", "up_proj", "down_proj") else layer.self_attn
            out_f, in_f = getattr(parent, proj).weight.shape
            tensors[lora_key(l, proj, "A")] = rng.normal(0.0, 0.5 / math.sqrt(in_f), (R, in_f))
            tensors[lora_key(l, proj, "B")] = rng.normal(0.0, 0.2 / math.sqrt(R), (out_f, R))
    f32 = {k: torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()}
    passages = []
    for T in LENGTHS:
        ids = rng.integers(3, V, size=T).tolist()
        split = int(rng.integers(10, T - 10 + 1))
        passages.append({"ids": ids, "split": split})
    return f32, passages


# ---------------------------------------------------------------- the step
def encode(enc, bos, ids, memory):
    """Bidirectional encoder over [BOS] ids m_1..m_k; returns the k memory states."""
    emb = enc.model.embed_tokens
    x = torch.cat([emb(torch.tensor([bos] + ids)), memory], dim=0)[None]
    S = x.shape[1]
    full = torch.ones(1, 1, S, S, dtype=torch.bool)
    h = enc.model(inputs_embeds=x, attention_mask=full).last_hidden_state[0]
    return h[S - memory.shape[0] :]


def decode_logits(dec, bos, mem, tgt):
    """Causal decoder over [emb(BOS), mem, emb(tgt[:-1])]; logits at rows k..k+L-1."""
    emb = dec.model.embed_tokens
    x = torch.cat([emb(torch.tensor([bos])), mem, emb(torch.tensor(tgt[:-1], dtype=torch.long))], dim=0)
    h = dec.model(inputs_embeds=x[None]).last_hidden_state[0]
    k = mem.shape[0]
    return dec.lm_head(h[k : k + len(tgt)])


def teacher_logits(dec, bos, ids, split):
    with torch.no_grad():
        logits = dec(input_ids=torch.tensor([[bos] + ids[:-1]])).logits[0]
    return logits[split : len(ids)]


def step_loss(objective, enc, dec, bos, passages, memory, per_passage=None, states=None):
    """The batch loss; optionally collects per-passage losses and passage 0's memory states."""
    total, count, kls = 0.0, 0, []
    for i, p in enumerate(passages):
        ids, s = p["ids"], p["split"]
        enc_text, tgt = (ids, ids) if objective == "rc" else (ids[:s], ids[s:])
        mem = encode(enc, bos, enc_text, memory)
        if states is not None and i == 0:
            states.append(mem.detach().clone())
        logits = decode_logits(dec, bos, mem, tgt)
        logp = F.log_softmax(logits, dim=-1)
        if objective == "kl":
            tlogp = F.log_softmax(teacher_logits(dec, bos, ids, s), dim=-1)
            kl = (tlogp.exp() * (tlogp - logp)).sum(-1).mean()
            kls.append(kl)
            if per_passage is not None:
                per_passage.append(kl.item())
        else:
            nll = -logp.gather(1, torch.tensor(tgt)[:, None]).sum()
            total = total + nll
            count += len(tgt)
            if per_passage is not None:
                per_passage.append(nll.item() / len(tgt))
    return torch.stack(kls).mean() if objective == "kl" else total / count


# ---------------------------------------------------------------- checks
def check_bidirectional(enc, bos, passage, memory):
    ids = passage["ids"]
    changed = ids[:-1] + [3 if ids[-1] != 3 else 4]
    with torch.no_grad():
        emb = enc.model.embed_tokens

        def first_pos(tokens, mask_kind):
            x = torch.cat([emb(torch.tensor([bos] + tokens)), memory], dim=0)[None]
            S = x.shape[1]
            if mask_kind == "full":
                mask = torch.ones(1, 1, S, S, dtype=torch.bool)
            elif mask_kind == "tril":
                mask = torch.tril(torch.ones(S, S, dtype=torch.bool))[None, None]
            else:
                mask = None
            return enc.model(inputs_embeds=x, attention_mask=mask).last_hidden_state[0]

        a, b = first_pos(ids, "full"), first_pos(changed, "full")
        moved = (a[0] - b[0]).abs().max().item()
        assert moved > 1e-6, f"bidirectional mask: position 0 did not see the last token ({moved})"
        c, d = first_pos(ids, "none"), first_pos(changed, "none")
        assert (c[0] - d[0]).abs().max().item() == 0.0, "causal run saw the future"
        e = first_pos(ids, "tril")
        assert (c - e).abs().max().item() < 1e-12, "4-D mask convention differs from the causal default"
        assert (a[-1] - c[-1]).abs().max().item() > 1e-6, "bidirectional equals causal at the last row"
    return moved


def check_grads(objective, enc, params, base, bos, passages):
    """gradcheck on memory_tokens; our own central differences on memory_tokens
    and on layer 0's v_proj lora_A (every element)."""
    backup = dict(params)
    params.update({k: v.detach() for k, v in backup.items()})
    result = {}
    for name in ["memory_tokens", lora_key(0, "v_proj", "A")]:
        saved = params[name]

        def f(t, name=name):
            params[name] = t
            return step_loss(objective, enc, base, bos, passages, params["memory_tokens"])

        x0 = saved.detach().clone().requires_grad_(True)
        entry = {}
        if name == "memory_tokens":
            assert torch.autograd.gradcheck(f, (x0,), eps=1e-6, atol=1e-7, rtol=1e-5)
            entry["gradcheck"] = "passed (eps 1e-6, atol 1e-7, rtol 1e-5)"
        (g,) = torch.autograd.grad(f(x0), x0)
        g = g.reshape(-1)
        eps, worst = 1e-5, 0.0
        flat = saved.detach().reshape(-1)
        with torch.no_grad():
            for j in range(flat.numel()):
                up, dn = flat.clone(), flat.clone()
                up[j] += eps
                dn[j] -= eps
                fd = (f(up.reshape(saved.shape)) - f(dn.reshape(saved.shape))).item() / (2 * eps)
                worst = max(worst, abs(fd - g[j].item()))
        params[name] = saved
        scale = g.abs().max().item()
        assert worst <= 1e-7 + 1e-5 * scale, (objective, name, worst, scale)
        entry.update({"central_differences_eps": eps, "max_abs_diff": worst, "max_abs_grad": scale})
        result[name] = entry
        print(f"  {objective} {name}: {entry}", flush=True)
    params.update(backup)
    return result


# ---------------------------------------------------------------- output
def rounded(t):
    return [float(f"{v:.{DIGITS}g}") for v in t.detach().reshape(-1).tolist()]


def tensor_json(t):
    return {"shape": list(t.shape), "values": rounded(t)}


def write_golden(arch, seed):
    base = load_model(arch)
    bos = base.config.bos_token_id
    f32, passages = make_inputs(base, seed)
    d = OUT / arch
    d.mkdir(parents=True, exist_ok=True)
    save_file(f32, d / "adapter.safetensors")
    params = {k: v.double() for k, v in f32.items()}

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    enc = make_encoder(base, leaves)
    moved = check_bidirectional(enc, bos, passages[0], params["memory_tokens"])
    print(f"{arch}: bidirectional check ok (position 0 moved by {moved:.2e})", flush=True)

    objectives, self_check = {}, {}
    keys = list(leaves)
    for obj in OBJECTIVES:
        per_passage, states = [], []
        loss = step_loss(obj, enc, base, bos, passages, leaves["memory_tokens"], per_passage, states)
        grads = torch.autograd.grad(loss, [leaves[k] for k in keys])
        objectives[obj] = {
            "loss": loss.item(),
            "passage_losses": per_passage,
            "memory_states_passage0": tensor_json(states[0]),
            "grads": {k: tensor_json(g) for k, g in zip(keys, grads)},
        }
        print(f"{arch} {obj}: loss {loss.item():.12g}, passages {per_passage}", flush=True)
        self_check[obj] = check_grads(obj, enc, leaves, base, bos, passages)

    golden = {
        "generator": f"scripts/golden_compress.py; transformers {transformers.__version__}, "
        f"torch {torch.__version__}, numpy {np.__version__}, safetensors {safetensors.__version__}",
        "model": f"{MODELS}/{arch}",
        "adapter": "adapter.safetensors",
        "dtype": "float64 computation on the f32 adapter values widened exactly",
        "bos_id": bos,
        "vocab_size": base.config.vocab_size,
        "hidden_size": base.config.hidden_size,
        "k": K,
        "memory_token_ids": list(range(base.config.vocab_size, base.config.vocab_size + K)),
        "lora": {"r": R, "alpha": ALPHA, "scale": ALPHA / R, "dropout": 0.0, "targets": TARGETS},
        "passages": passages,
        "objectives": objectives,
        "self_check": self_check,
    }
    (d / "golden.json").write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(arch, {p.name: p.stat().st_size for p in sorted(d.iterdir())})


def main():
    torch.set_default_dtype(torch.float64)
    modeling_llama.LlamaRMSNorm.forward = rmsnorm_keep_dtype
    modeling_llama.LlamaRotaryEmbedding.forward = rotary_keep_dtype
    for arch, seed in ARCHS.items():
        write_golden(arch, seed)


if __name__ == "__main__":
    main()
