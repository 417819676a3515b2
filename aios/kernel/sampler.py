"""Turning a sequence's logits into its next token(s): sampling, choices, stop strings, beams.

``Sampler.advance(seq, logits)`` consumes one row of logits per live beam, appends the chosen
token(s) to ``seq.output_ids`` and returns why the sequence is done (``"eos"``, ``"stop"``,
``"length"``, ``"choice"``) or ``None``. Everything it keeps between steps lives on the
``Sequence`` (and is snapshotted with it), so a suspended request continues exactly.

- sampling: temperature, top-k, top-p, with the request's own seeded ``torch.Generator``;
- choices: a token trie of the allowed answers masks the logits, so the output is one of them;
- stop strings: an incremental search over the decoded text (only the new tail is scanned);
- beams: ``num_beams`` rows per sequence; the best ``2 * width`` continuations are ranked, ended
  hypotheses kept with length-normalized scores, and surviving beams take their parent's KV
  (``reorder(src_slots, dst_slots, length)``, the KV cache's ``copy_slots``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from aios.kernel.sequence import Sequence

END = -1  # key marking a complete choice in the choices trie


class BeamSearchError(RuntimeError):
    error_type = "EngineError"


class Sampler:
    def __init__(self, tokenizer, eos_ids: set[int], window: int, reorder: Callable[[list[int], list[int], int], None]):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.window = window
        self.reorder = reorder

    # -- set-up ----------------------------------------------------------------------------------
    def choice_trie(self, choices: list[str]) -> dict:
        root: dict = {}
        for ci, choice in enumerate(choices):
            node = root
            for t in self.tokenizer(choice, add_special_tokens=False)["input_ids"]:
                node = node.setdefault(int(t), {})
            node.setdefault(END, ci)
        return root

    @staticmethod
    def start(seq: Sequence) -> None:
        """Fresh generation state once the prompt is in the KV cache."""
        seq.output_ids, seq.beam_scores = [[]], [0.0]
        seq.choice_nodes = [seq.choice_trie] if seq.choice_trie is not None else []

    # -- one step ----------------------------------------------------------------------------------
    def advance(self, seq: Sequence, logits: torch.Tensor, greedy: list[int] | None = None) -> str | None:
        """``greedy``: each row's argmax, computed for the whole step at once (saves a sync per row)."""
        seq.quantum_used += 1
        if seq.num_beams > 1:
            return self._beam_step(seq, logits)
        if greedy is not None and seq.request.temperature == 0 and seq.choice_trie is None:
            tok = greedy[0]
        else:
            tok = self._sample(seq, self._constrain(seq, 0, logits[0]))
        ids = seq.output_ids[0]
        ids.append(tok)
        seq.syscall.emit_token(tok)  # streaming: greedy/sampled tokens are final once chosen
        reason = None
        if seq.choice_trie is not None:
            node = seq.choice_nodes[0]
            if tok in self.eos_ids and END in node:
                reason, seq.choice_index = "choice", node[END]
            else:
                node = node[tok]
                seq.choice_nodes[0] = node
                if END in node and len(node) == 1:
                    reason, seq.choice_index = "choice", node[END]
        elif tok in self.eos_ids:
            reason = "eos"
        if reason is None and seq.request.stop and self._hit_stop(seq):
            reason = "stop"
        if reason is None and (len(ids) >= seq.max_new_tokens or seq.kv_len + 1 >= self.window):
            reason = "length"
        return reason

    def _constrain(self, seq: Sequence, beam: int, logits: torch.Tensor) -> torch.Tensor:
        if seq.choice_trie is None:
            return logits
        node = seq.choice_nodes[beam]
        allowed = [t for t in node if t != END]
        if END in node:
            allowed += sorted(self.eos_ids)
        mask = torch.full_like(logits, float("-inf"))
        mask[torch.tensor(allowed, dtype=torch.long, device=logits.device)] = 0.0
        return logits + mask

    @staticmethod
    def _sample(seq: Sequence, logits: torch.Tensor) -> int:
        req = seq.request
        if req.temperature == 0:
            return int(torch.argmax(logits))
        logits = logits / req.temperature
        if req.top_k is not None and req.top_k < logits.numel():
            kth = torch.topk(logits, req.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if req.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            remove = (torch.cumsum(probs, dim=-1) - probs) > req.top_p
            sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
            logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
        probs = torch.softmax(logits, dim=-1).cpu()
        return int(torch.multinomial(probs, 1, generator=seq.generator))

    def _hit_stop(self, seq: Sequence) -> bool:
        """Incremental stop-string search: only text past ``stop_scan`` (minus overlap) is searched."""
        text = self.tokenizer.decode(seq.output_ids[0], skip_special_tokens=True)
        longest = max(len(s) for s in seq.request.stop)
        start = max(0, seq.stop_scan - longest + 1)
        hits = [i for i in (text.find(s, start) for s in seq.request.stop) if i >= 0]
        seq.stop_scan = len(text)
        if hits:
            seq.stop_text = text[: min(hits)]
            return True
        return False

    # -- beams -------------------------------------------------------------------------------------
    def _beam_step(self, seq: Sequence, logits: torch.Tensor) -> str | None:
        width, vocab = seq.num_beams, logits.shape[-1]
        lp = seq.request.length_penalty
        rows = torch.stack([self._constrain(seq, j, logits[j]) for j in range(logits.shape[0])])
        logp = torch.log_softmax(rows, dim=-1)
        cand = logp + torch.tensor(seq.beam_scores, dtype=logp.dtype, device=logp.device)[:, None]
        vals, idx = torch.topk(cand.view(-1), min(2 * width, cand.numel()))
        new_len = len(seq.output_ids[0]) + 1
        new: list[tuple[int, int, float]] = []
        for rank, (v, ix) in enumerate(zip(vals.tolist(), idx.tolist(), strict=True)):
            if v == float("-inf"):
                break
            b, tok = divmod(ix, vocab)
            ended, reason, kept = False, "eos", seq.output_ids[b] + [tok]
            if seq.choice_trie is not None:
                node = seq.choice_nodes[b]
                if tok in self.eos_ids and END in node:
                    ended, reason, kept = True, "choice", seq.output_ids[b]
                elif END in node.get(tok, {}) and len(node[tok]) == 1:
                    ended, reason = True, "choice"
            elif tok in self.eos_ids:
                ended, kept = True, seq.output_ids[b]
            if ended:
                if rank < width:
                    seq.finished_beams.append((v / (new_len**lp), kept, reason))
                continue
            new.append((b, tok, v))
            if len(new) == width:
                break
        # reorder: beam j continues from parent b (its KV must be the parent's)
        src = [seq.slots[b] for j, (b, _, _) in enumerate(new) if b != j]
        dst = [seq.slots[j] for j, (b, _, _) in enumerate(new) if b != j]
        self.reorder(src, dst, seq.kv_len)
        if seq.choice_trie is not None:
            seq.choice_nodes = [seq.choice_nodes[b][tok] for b, tok, _ in new]
        seq.output_ids = [seq.output_ids[b] + [tok] for b, tok, _ in new]
        seq.beam_scores = [v for _, _, v in new]
        done = not new
        if new and (new_len >= seq.max_new_tokens or seq.kv_len + 1 >= self.window):
            for ids, v in zip(seq.output_ids, seq.beam_scores, strict=True):
                seq.finished_beams.append((v / (new_len**lp), ids, "length"))
            done = True
        elif new and len(seq.finished_beams) >= width:
            worst_kept = sorted((h[0] for h in seq.finished_beams), reverse=True)[width - 1]
            done = max(seq.beam_scores) / (new_len**lp) <= worst_kept
        if not done:
            return None
        if not seq.finished_beams:
            raise BeamSearchError("beam search ended without any hypothesis (all continuations masked)")
        score, ids, reason = max(seq.finished_beams, key=lambda h: h[0])
        seq.output_ids = [list(ids)]
        seq.beam_score = score
        if reason == "choice":
            node = seq.choice_trie
            for t in ids:
                node = node[t]
            seq.choice_index = node[END]
        return reason
