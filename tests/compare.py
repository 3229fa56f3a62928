"""Comparisons the tests (and benchmarks) share: transformers' own greedy decoding, result equality
up to float rounding, and an in-process model cut to its top-k as a remote one is."""

import torch

from blendin_llm.backends.transformers import TransformersBackend


def hf_greedy(model, tok, prompt, n):
    ids = torch.tensor([tok(prompt).input_ids])
    out = model.generate(ids, do_sample=False, max_new_tokens=n, pad_token_id=tok.pad_token_id,
                         eos_token_id=None, min_new_tokens=0)
    return out[0, ids.shape[1]:].tolist()


def same_numbers(a, b, rel=1e-4, abs_=1e-5):
    """a == b for nested records (pydantic models, dicts, lists), floats up to rounding: decoded in
    a batch, a request's floats equal its solo run's up to float32 rounding (relative to the
    logits' scale, which is large in the random test models)."""
    import math

    if hasattr(a, "model_dump"):
        a, b = a.model_dump(), b.model_dump()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same_numbers(a[k], b[k], rel, abs_) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(
            same_numbers(x, y, rel, abs_) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)
    return a == b


class TopK(TransformersBackend):
    """The in-process model known by its top-k log-probs only, as a remote one is: the top-k
    exact and the rest of the mass spread evenly (what ``RemoteModel`` returns). ``k``: set on
    the class."""

    k = 20

    @property
    def top_k_approximation(self):
        return self.k

    def forward_batch(self, states, ids, n_last):
        out = []
        for logits in super().forward_batch(states, ids, n_last):
            lp = torch.log_softmax(logits, -1)
            v, i = torch.topk(lp, self.k, -1)
            mass = v.exp().sum(-1, keepdim=True).clamp(max=1.0)
            tail = ((1 - mass).clamp(min=1e-6) / (lp.shape[-1] - self.k)).log()
            out.append(tail.expand_as(lp).clone().scatter_(-1, i, v))
        return out
