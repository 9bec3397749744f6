"""Prompt text encoder: learned context vectors + frozen class-name tokens -> CLIP text features.

A prompt is ``[SOS, ctx_1 .. ctx_n, <class-name tokens>, <suffix tokens>, EOT]``. It goes through the CLIP
model's own token/positional embeddings, transformer, final norm and projection, and is pooled at its EOT
position exactly like ``encode_text``, so that a context equal to the token embeddings of "a photo of a" gives
``encode_text("a photo of a {name}.")``.

Three exact ways to compute the same thing (``path``):

- ``"full"``: every prompt padded to the model's context length (77), as ``encode_text`` does.
- ``"truncated"``: the sequence cut after the longest prompt's EOT. The text transformer is causal, so positions
  after a prompt's EOT never influence it; cutting them changes nothing but the cost.
- ``"prefix"`` (shared prefix): with one context shared by all classes (CoOp, KgCoOp), or one per image
  (CoCoOp), the first ``1 + n`` positions are identical for every class at every layer. They are computed once;
  each layer's keys/values of that prefix are kept, and only each class's few suffix tokens run through the
  layers, attending to ``[prefix K/V ; own causal K/V]``. Built from the model's own layer weights.

``"auto"`` (default) takes the shared prefix where it applies (shared or per-image context) and the truncated
path otherwise (class-specific context).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

PATHS = ("auto", "prefix", "truncated", "full")

# The tokenizer is asked for sequences this many times the model's context length, so that an over-long prompt
# is measured (and refused) instead of silently cut by the tokenizer.
_MEASURE_FACTOR = 8


class TextEncoderError(ValueError):
    """A prompt or model the text encoder cannot handle exactly; the message is one line."""


@dataclass(frozen=True)
class ClassTokens:
    """Frozen token embeddings of the per-class prompt suffixes ``" {name}{suffix}" + EOT``.

    Built once by :meth:`PromptTextEncoder.class_tokens` and reused every step.
    """

    classnames: tuple[str, ...]
    suffix: str
    token_ids: Tensor  # [K, S] int64, padded with 0 after each row's EOT
    embeddings: Tensor  # [K, S, d] frozen token embeddings, zero after each row's EOT
    lengths: tuple[int, ...]  # tokens per row, EOT included
    eot_index: tuple[int, ...]  # position of the pooled (EOT) token within each row
    lead: str = ""  # fixed words between the context and the class name (MaPLe's "of a"); "" for most methods

    def __len__(self) -> int:
        return len(self.classnames)

    @property
    def max_length(self) -> int:
        return max(self.lengths) if self.lengths else 0

    def select(self, start: int, stop: int) -> "ClassTokens":
        """Rows ``start:stop``, cut to their own longest suffix (a chunk of short names is cheaper)."""
        lengths = self.lengths[start:stop]
        s = max(lengths) if lengths else 0
        return ClassTokens(
            classnames=self.classnames[start:stop],
            suffix=self.suffix,
            token_ids=self.token_ids[start:stop, :s],
            embeddings=self.embeddings[start:stop, :s],
            lengths=lengths,
            eot_index=self.eot_index[start:stop],
            lead=self.lead,
        )

    def to(self, device: torch.device | str) -> "ClassTokens":
        return ClassTokens(
            self.classnames, self.suffix, self.token_ids.to(device), self.embeddings.to(device), self.lengths,
            self.eot_index, self.lead,
        )


@dataclass
class _TextTower:
    """References to the frozen text-tower parts (a plain object so nn.Module registers none of them)."""

    token_embedding: nn.Embedding
    positional_embedding: Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Tensor | nn.Module | None
    attn_mask: Tensor
    pool_type: str
    eos_id: int | None
    context_length: int
    width: int


def _text_tower(model: nn.Module) -> _TextTower:
    """The text parts of an open_clip ``CLIP`` (attributes on the model) or ``CustomTextCLIP`` (``model.text``)."""
    owner = model if hasattr(model, "token_embedding") and hasattr(model, "transformer") else getattr(model, "text", None)
    if owner is None or not hasattr(owner, "token_embedding"):
        raise TextEncoderError(f"{type(model).__name__} has no open_clip text tower (token_embedding/transformer)")
    if getattr(owner, "cls_emb", None) is not None:
        raise TextEncoderError("text towers with a CLS embedding (CoCa-style) are not supported by the prompt encoder")
    pool_type = getattr(owner, "text_pool_type", None) or getattr(owner, "pool_type", "argmax")
    if pool_type not in ("argmax", "eos"):
        raise TextEncoderError(f"text pool type {pool_type!r} is not supported (prompts are pooled at their EOT token)")
    eos_id = getattr(owner, "text_eos_id", None) if owner is model else getattr(owner, "eos_id", None)
    mask = getattr(owner, "attn_mask", None)
    if mask is None and hasattr(owner, "build_attention_mask"):
        mask = owner.build_attention_mask()
    pos = owner.positional_embedding
    n_pos = pos.shape[0]
    causal = torch.full((n_pos, n_pos), float("-inf"), device=pos.device).triu_(1)
    if not isinstance(mask, Tensor):
        raise TextEncoderError("the text tower has no causal attention mask; truncating or sharing a prefix would not be exact")
    ok = mask.shape == causal.shape and (
        torch.equal(mask.to(torch.bool), causal.isinf()) if mask.dtype == torch.bool else torch.equal(mask.float(), causal)
    )
    if not ok:
        raise TextEncoderError("the text tower's attention mask is not plain causal; the prompt encoder needs a causal one")
    width = owner.token_embedding.weight.shape[1]
    return _TextTower(
        token_embedding=owner.token_embedding,
        positional_embedding=pos,
        transformer=owner.transformer,
        ln_final=owner.ln_final,
        text_projection=owner.text_projection,
        attn_mask=causal,
        pool_type=pool_type,
        eos_id=eos_id,
        context_length=n_pos,
        width=width,
    )


def _prefix_unsupported_reason(transformer: nn.Module) -> str | None:
    """Why the shared-prefix path cannot reproduce this transformer's blocks exactly, or None if it can."""
    for i, blk in enumerate(transformer.resblocks):
        name = type(blk).__name__
        attn = getattr(blk, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention):
            return f"block {i} ({name}) uses {type(attn).__name__} attention, not nn.MultiheadAttention"
        if hasattr(blk, "ln_1_kv"):
            return f"block {i} ({name}) is a cross-attention block"
        for extra in ("ln_attn", "ln_inner", "head_scale"):
            if getattr(blk, extra, None) is not None and not isinstance(getattr(blk, extra), nn.Identity):
                return f"block {i} ({name}) has {extra}"
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
            return f"block {i} ({name}) has a non-standard nn.MultiheadAttention (separate q/k/v, bias_k or zero-attn)"
        if attn.dropout > 0:
            return f"block {i} ({name}) has attention dropout {attn.dropout}"
        for part in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2"):
            if not hasattr(blk, part):
                return f"block {i} ({name}) has no {part}"
    return None


class PromptTextEncoder(nn.Module):
    """Frozen CLIP text side for prompt learning. Holds references to the model's text parts (and sets
    ``requires_grad=False`` on them); registers no parameters or buffers, so a learner's checkpoint stays free of
    CLIP weights and the model stays on the device it was loaded on.

    ``truncate=False`` forces the full-context path (tests, benchmarks). ``shared_prefix``: None = use it where it
    is exact, True = require it (error if the architecture has unsupported blocks), False = never.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, *, truncate: bool = True, shared_prefix: bool | None = None):
        super().__init__()
        tower = _text_tower(clip_model)
        for p in (tower.token_embedding.weight, tower.positional_embedding, *tower.transformer.parameters(),
                  *tower.ln_final.parameters()):
            p.requires_grad_(False)
        if isinstance(tower.text_projection, (nn.Module, Tensor)):
            tower.text_projection.requires_grad_(False)
        self._tower = tower
        self._tokenizer = tokenizer
        self.context_length = tower.context_length
        self.width = tower.width  # d: token width
        proj = tower.text_projection
        self.embed_dim = (  # D: feature width
            tower.width if proj is None else proj.out_features if isinstance(proj, nn.Module) else proj.shape[1]
        )
        self.truncate = truncate
        reason = _prefix_unsupported_reason(tower.transformer)
        if shared_prefix and reason:
            raise TextEncoderError(f"shared-prefix text encoding not possible: {reason}")
        self.prefix_unsupported = reason
        self.shared_prefix = (reason is None) if shared_prefix is None else shared_prefix
        if shared_prefix is None and reason:
            log.info("shared-prefix text encoding off (%s); using the truncated path", reason)
        # Older open_clip transformers take [L, N, D]; newer ones carry batch_first and take [N, L, D].
        self._batch_first_input = hasattr(tower.transformer, "batch_first")
        sot = self._tokenize([""])[0]
        self._sot_id = int(sot[0])
        self._class_cache: dict[tuple, ClassTokens] = {}

    # ------------------------------------------------------------------ tokens
    @property
    def device(self) -> torch.device:
        return self._tower.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._tower.token_embedding.weight.dtype

    def _tokenize(self, texts: Sequence[str]) -> Tensor:
        return self._tokenizer(list(texts), context_length=self.context_length * _MEASURE_FACTOR)

    def _eot_positions(self, ids: Tensor) -> list[int]:
        """Where the model pools each tokenized row (same rule as open_clip's text_global_pool)."""
        if self._tower.pool_type == "eos":
            return (ids == self._tower.eos_id).int().argmax(dim=-1).tolist()
        return ids.argmax(dim=-1).tolist()

    @torch.no_grad()
    def word_embeddings(self, phrase: str) -> Tensor:
        """Token embeddings ``[n, d]`` of ``phrase`` (no SOS/EOT), e.g. to initialise a context from "a photo of a"."""
        ids = self._tokenize([phrase])
        eot = self._eot_positions(ids)[0]
        if eot + 1 > self.context_length:
            raise TextEncoderError(f"context phrase {phrase!r} is {eot - 1} tokens, too long for context length {self.context_length}")
        tok = ids[0, 1:eot].to(self.device)
        return self._tower.token_embedding(tok).detach().clone()

    @torch.no_grad()
    def class_tokens(self, classnames: list[str], suffix: str = ".", *, lead: str = "") -> ClassTokens:
        """Tokenize ``" {name}{suffix}"`` for every class once (cached): frozen embeddings ``[K, S, d]``.

        ``lead``: fixed words put before every class name, ``" {lead} {name}{suffix}"`` (a context initialised
        from a phrase longer than the learned tokens keeps the rest of the phrase here, as MaPLe does)."""
        key = (tuple(classnames), suffix) if not lead else (tuple(classnames), suffix, lead)
        hit = self._class_cache.get(key)
        if hit is not None:
            return hit
        if not classnames:
            raise TextEncoderError("class_tokens needs at least one class name")
        head = f" {lead.strip()}" if lead.strip() else ""
        ids = self._tokenize([f"{head} {name}{suffix}" for name in classnames])
        eots = self._eot_positions(ids)
        for name, e in zip(classnames, eots):
            if e + 1 > self.context_length:
                raise TextEncoderError(
                    f"class {name!r}: prompt suffix is {e} tokens, more than the context length {self.context_length} allows"
                )
        lengths = tuple(eots)  # tokens after SOS up to and including EOT
        s = max(lengths)
        rows = torch.zeros(len(classnames), s, dtype=torch.long)
        for i, e in enumerate(eots):
            rows[i, :e] = ids[i, 1 : e + 1]
        rows = rows.to(self.device)
        emb = self._tower.token_embedding(rows)
        valid = torch.arange(s, device=self.device)[None, :] < torch.tensor(lengths, device=self.device)[:, None]
        emb = (emb * valid[..., None].to(emb.dtype)).detach()
        out = ClassTokens(
            classnames=tuple(classnames),
            suffix=suffix,
            token_ids=rows,
            embeddings=emb,
            lengths=lengths,
            eot_index=tuple(e - 1 for e in lengths),
            lead=lead.strip(),
        )
        if len(self._class_cache) >= 16:  # a handful of class lists per run (base, new, all); keep it bounded
            self._class_cache.pop(next(iter(self._class_cache)))
        self._class_cache[key] = out
        return out

    # ------------------------------------------------------------------ shared pieces
    def _sos(self) -> Tensor:
        return self._tower.token_embedding.weight[self._sot_id]

    def _run_transformer(self, x: Tensor) -> Tensor:
        """The model's own transformer on ``[N, L, d]`` with the causal mask cut to ``L x L``."""
        L = x.shape[1]
        mask = self._tower.attn_mask[:L, :L].to(device=x.device, dtype=x.dtype)
        tr = self._tower.transformer
        if self._batch_first_input:
            return tr(x, attn_mask=mask)
        return tr(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)

    def _project(self, h: Tensor) -> Tensor:
        h = self._tower.ln_final(h)
        proj = self._tower.text_projection
        if proj is None:
            return h
        if isinstance(proj, nn.Module):
            return proj(h)
        return h @ proj

    def _check_lengths(self, n_ctx: int, classes: ClassTokens) -> None:
        limit = self.context_length - 1 - n_ctx
        for name, length in zip(classes.classnames, classes.lengths):
            if length > limit:
                raise TextEncoderError(
                    f"class {name!r}: prompt is {1 + n_ctx + length} tokens (SOS + {n_ctx} context + {length} "
                    f"name/suffix/EOT), more than the context length {self.context_length}"
                )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        ctx: Tensor,
        classes: ClassTokens,
        *,
        per_image: bool = False,
        chunk_size: int | None = None,
        path: str | None = None,
    ) -> Tensor:
        """Text features (raw, not normalised) of ``[SOS, ctx, class suffix]`` prompts.

        - ``ctx [n, d]`` shared across classes -> ``[K, D]``
        - ``ctx [K, n, d]`` one context per class -> ``[K, D]``
        - ``ctx [B, n, d]`` with ``per_image=True`` (CoCoOp) -> ``[B, K, D]``

        ``chunk_size``: classes per chunk (bounded memory over many classes; results identical).
        ``path``: "auto" | "prefix" | "truncated" | "full"; None takes the constructor's choice.
        """
        if ctx.dim() not in (2, 3) or ctx.shape[-1] != self.width:
            raise TextEncoderError(f"context must be [n, {self.width}] or [B|K, n, {self.width}], got {list(ctx.shape)}")
        if per_image and ctx.dim() != 3:
            raise TextEncoderError(f"per_image=True needs a context [B, n, {self.width}], got {list(ctx.shape)}")
        K = len(classes)
        class_specific = ctx.dim() == 3 and not per_image
        if class_specific and ctx.shape[0] != K:
            raise TextEncoderError(f"class-specific context has {ctx.shape[0]} rows for {K} classes")
        if chunk_size is not None and chunk_size < 1:
            raise TextEncoderError(f"chunk_size must be >= 1, got {chunk_size}")
        n_ctx = ctx.shape[-2]
        self._check_lengths(n_ctx, classes)
        path = self._resolve_path(path, class_specific)

        ctx = ctx.to(self.dtype)
        if classes.embeddings.device != ctx.device:
            classes = classes.to(ctx.device)
        step = chunk_size or K
        if path == "prefix":
            ctx_g = ctx.unsqueeze(0) if ctx.dim() == 2 else ctx  # [G, n, d], G = 1 or B
            kv = self._prefix_kv(ctx_g)
            outs = [self._suffix_forward(kv, classes.select(i, min(i + step, K))) for i in range(0, K, step)]
            out = torch.cat(outs, dim=1)  # [G, K, D]
            return out if per_image else out[0]
        outs = []
        for i in range(0, K, step):
            chunk = classes.select(i, min(i + step, K))
            c = ctx[i : i + step] if class_specific else ctx
            outs.append(self._plain_forward(c, chunk, per_image=per_image, full=(path == "full")))
        return torch.cat(outs, dim=1 if per_image else 0)

    def _resolve_path(self, path: str | None, class_specific: bool) -> str:
        if path is None:
            path = "auto" if self.truncate else "full"
        if path not in PATHS:
            raise TextEncoderError(f"unknown text-encoder path {path!r}; one of {', '.join(PATHS)}")
        if path == "auto":
            return "prefix" if (self.shared_prefix and not class_specific) else "truncated"
        if path == "prefix":
            if class_specific:
                raise TextEncoderError("shared-prefix path needs a context shared across classes (or per image), not class-specific")
            if self.prefix_unsupported:
                raise TextEncoderError(f"shared-prefix text encoding not possible: {self.prefix_unsupported}")
        return path

    def _plain_forward(self, ctx: Tensor, classes: ClassTokens, *, per_image: bool, full: bool) -> Tensor:
        """Whole prompts through the model's transformer, cut after the longest EOT (or padded to 77 if ``full``)."""
        d = self.width
        emb = classes.embeddings.to(ctx.dtype)  # [Kc, S, d]
        Kc, S = emb.shape[0], emb.shape[1]
        n = ctx.shape[-2]
        sos = self._sos().to(ctx.dtype)
        if per_image:  # [B, n, d] -> rows (b, k)
            B = ctx.shape[0]
            x = torch.cat(
                [sos.expand(B, Kc, 1, d), ctx.unsqueeze(1).expand(B, Kc, n, d), emb.unsqueeze(0).expand(B, Kc, S, d)], dim=2
            ).reshape(B * Kc, 1 + n + S, d)
        else:
            c = ctx.unsqueeze(0).expand(Kc, n, d) if ctx.dim() == 2 else ctx
            x = torch.cat([sos.expand(Kc, 1, d), c, emb], dim=1)
        L = self.context_length if full else x.shape[1]
        if L > x.shape[1]:
            x = F.pad(x, (0, 0, 0, L - x.shape[1]))
        x = x + self._tower.positional_embedding[:L].to(x.dtype)
        h = self._run_transformer(x)
        idx = torch.tensor([1 + n + e for e in classes.eot_index], device=h.device)
        if per_image:
            idx = idx.repeat(ctx.shape[0])
        pooled = h[torch.arange(h.shape[0], device=h.device), idx]
        out = self._project(pooled)
        return out.view(ctx.shape[0], Kc, -1) if per_image else out

    # ------------------------------------------------------------------ shared prefix
    def _attention(
        self, blk: nn.Module, qkv: Tensor, past: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One block's multi-head attention for ``qkv [G, M, S, 3d]`` (M prompts of S tokens per group) attending
        to ``past`` keys/values ``[G, h, P, hd]`` (shared by the M prompts of a group) and to themselves causally.

        Returns the attention output ``[G, M, S, d]`` (before out_proj) and the own keys/values ``[G, h, M, S, hd]``.
        """
        G, M, S, d3 = qkv.shape
        d = d3 // 3
        h = blk.attn.num_heads
        hd = d // h
        q, k, v = qkv.view(G, M, S, 3, h, hd).permute(3, 0, 4, 1, 2, 5).unbind(0)  # each [G, h, M, S, hd]
        q = q * (1.0 / math.sqrt(hd))
        own = q @ k.transpose(-1, -2)  # [G, h, M, S, S]
        own = own + self._tower.attn_mask[:S, :S].to(device=own.device, dtype=own.dtype)
        if past is None:
            o = own.softmax(dim=-1) @ v
        else:
            pk, pv = past
            P = pk.shape[2]
            # Every prompt of a group sees the same prefix: fold its M*S queries into one matmul against it.
            pre = (q.reshape(G, h, M * S, hd) @ pk.transpose(-1, -2)).view(G, h, M, S, P)
            a = torch.cat([pre, own], dim=-1).softmax(dim=-1)
            o = (a[..., :P].reshape(G, h, M * S, P) @ pv).view(G, h, M, S, hd) + a[..., P:] @ v
        return o.permute(0, 2, 3, 1, 4).reshape(G, M, S, d), k, v

    @staticmethod
    def _mlp_residual(blk: nn.Module, x: Tensor, attn_out: Tensor) -> Tensor:
        """The rest of an open_clip ResidualAttentionBlock after attention: out_proj, layer scales, MLP."""
        x = x + blk.ls_1(blk.attn.out_proj(attn_out))
        return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

    def _prefix_kv(self, ctx_g: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Keys/values ``[G, h, 1 + n, hd]`` of the shared prefix ``[SOS, ctx]`` at every layer."""
        G, n, d = ctx_g.shape
        x = torch.cat([self._sos().to(ctx_g.dtype).expand(G, 1, d), ctx_g], dim=1)
        x = x + self._tower.positional_embedding[: 1 + n].to(x.dtype)  # [G, p, d]
        kv = []
        blocks = list(self._tower.transformer.resblocks)
        for li, blk in enumerate(blocks):
            qkv = F.linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias)
            o, k, v = self._attention(blk, qkv.unsqueeze(1), None)
            kv.append((k[:, :, 0], v[:, :, 0]))
            if li + 1 < len(blocks):  # the last layer's prefix output is never read: only its K/V are
                x = self._mlp_residual(blk, x, o[:, 0])
        return kv

    def _suffix_forward(self, kv: list[tuple[Tensor, Tensor]], classes: ClassTokens) -> Tensor:
        """Each class's suffix tokens through the layers, attending to the prefix K/V: ``[G, Kc, D]``.

        Per-token work (norms, projections, MLP) runs on the packed real tokens only; just the attention sees
        them padded to ``[Kc, S]`` (padding sits after every real token, so the causal mask hides it).
        """
        G = kv[0][0].shape[0]
        p = kv[0][0].shape[2]
        emb = classes.embeddings.to(kv[0][0].dtype)  # [Kc, S, d]
        Kc, S, d = emb.shape
        dev = emb.device
        lengths = torch.tensor(classes.lengths)
        # Positions of the real tokens in the padded [Kc * S] layout (built on the host: no device sync).
        slot = (torch.arange(S)[None, :] < lengths[:, None]).view(-1).nonzero().squeeze(1).to(dev)  # [T]
        x = (emb + self._tower.positional_embedding[p : p + S].to(emb.dtype)).view(Kc * S, d).index_select(0, slot)
        x = x.unsqueeze(0).expand(G, -1, d)  # [G, T, d]
        for blk, past in zip(self._tower.transformer.resblocks, kv):
            qkv = F.linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias)  # [G, T, 3d]
            qkv = qkv.new_zeros(G, Kc * S, 3 * d).index_copy(1, slot, qkv).view(G, Kc, S, 3 * d)
            o, _, _ = self._attention(blk, qkv, past)
            x = self._mlp_residual(blk, x, o.view(G, Kc * S, d).index_select(1, slot))
        eot = (torch.cumsum(lengths, 0) - lengths + torch.tensor(classes.eot_index)).to(dev)  # in the packed layout
        return self._project(x.index_select(1, eot))  # [G, Kc, D]

    # ------------------------------------------------------------------ deep prompts (MaPLe, PromptSRC)
    def deep_forward(self, layer_ctx: Sequence[Tensor], classes: ClassTokens, *, chunk_size: int | None = None) -> Tensor:
        """``[K, D]`` raw text features of ``[SOS, ctx, class suffix]`` prompts with deep prompts.

        ``layer_ctx[0]`` ``[n, d]`` is the context at the input (token embeddings, positional embedding added);
        ``layer_ctx[i]`` ``[n, d]`` for ``i >= 1`` replaces the ``n`` context positions' hidden states at the input
        of layer ``i`` (no positional embedding), so the previous layer's outputs there are dropped. Layers from
        ``len(layer_ctx)`` on take the propagated states. One prompt depth J = ``len(layer_ctx)`` <= layers.
        The sequence is cut after the longest prompt's EOT, as on the truncated path (exact: causal mask)."""
        if not layer_ctx:
            raise TextEncoderError("deep_forward needs at least the input-layer context")
        n_layers = len(self._tower.transformer.resblocks)
        if len(layer_ctx) > n_layers:
            raise TextEncoderError(f"{len(layer_ctx)} prompt layers for a text tower of {n_layers} layers")
        n = layer_ctx[0].shape[0]
        for i, c in enumerate(layer_ctx):
            if c.dim() != 2 or c.shape != (n, self.width):
                raise TextEncoderError(f"layer {i} context must be [{n}, {self.width}], got {list(c.shape)}")
        if chunk_size is not None and chunk_size < 1:
            raise TextEncoderError(f"chunk_size must be >= 1, got {chunk_size}")
        self._check_lengths(n, classes)
        layer_ctx = [c.to(self.dtype) for c in layer_ctx]
        if classes.embeddings.device != layer_ctx[0].device:
            classes = classes.to(layer_ctx[0].device)
        K = len(classes)
        step = chunk_size or K
        return torch.cat([self._deep_chunk(layer_ctx, classes.select(i, min(i + step, K))) for i in range(0, K, step)])

    def _deep_chunk(self, layer_ctx: list[Tensor], classes: ClassTokens) -> Tensor:
        ctx = layer_ctx[0]
        n, d = ctx.shape
        emb = classes.embeddings.to(ctx.dtype)
        Kc = emb.shape[0]
        x = torch.cat([self._sos().to(ctx.dtype).expand(Kc, 1, d), ctx.unsqueeze(0).expand(Kc, n, d), emb], dim=1)
        L = x.shape[1]
        x = x + self._tower.positional_embedding[:L].to(x.dtype)
        mask = self._tower.attn_mask[:L, :L].to(device=x.device, dtype=x.dtype)
        tr = self._tower.transformer
        batch_first = bool(getattr(tr, "batch_first", False))  # old open_clip blocks take [L, N, d]
        h = x if batch_first else x.transpose(0, 1)
        for i, blk in enumerate(tr.resblocks):
            if 0 < i < len(layer_ctx):
                c = layer_ctx[i]
                if batch_first:
                    h = torch.cat([h[:, :1], c.unsqueeze(0).expand(h.shape[0], n, d), h[:, 1 + n:]], dim=1)
                else:
                    h = torch.cat([h[:1], c.unsqueeze(1).expand(n, h.shape[1], d), h[1 + n:]], dim=0)
            h = blk(h, attn_mask=mask)
        h = h if batch_first else h.transpose(0, 1)
        idx = torch.tensor([1 + n + e for e in classes.eot_index], device=h.device)
        return self._project(h[torch.arange(Kc, device=h.device), idx])

    # ------------------------------------------------------------------ hand-written prompts
    @torch.no_grad()
    def encode_texts(self, texts: list[str], chunk_size: int | None = None) -> Tensor:
        """``[K, D]`` features of hand-written prompts (zero-shot, KgCoOp targets); equals ``model.encode_text``."""
        if not texts:
            raise TextEncoderError("encode_texts needs at least one text")
        if chunk_size is not None and chunk_size < 1:
            raise TextEncoderError(f"chunk_size must be >= 1, got {chunk_size}")
        ids = self._tokenize(texts)
        eots = self._eot_positions(ids)
        for t, e in zip(texts, eots):
            if e + 1 > self.context_length:
                raise TextEncoderError(f"prompt {t!r} is {e + 1} tokens, more than the context length {self.context_length}")
        ids = ids.to(self.device)
        step = chunk_size or len(texts)
        outs = []
        for i in range(0, len(texts), step):
            e = torch.tensor(eots[i : i + step], device=self.device)
            L = int(e.max()) + 1
            x = self._tower.token_embedding(ids[i : i + step, :L]).to(self.dtype)
            x = x + self._tower.positional_embedding[:L].to(x.dtype)
            h = self._run_transformer(x)
            outs.append(self._project(h[torch.arange(h.shape[0], device=h.device), e]))
        return torch.cat(outs, dim=0)
