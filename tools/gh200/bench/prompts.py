"""Benchmark prompts: synthetic ones of an exact token length, and a fixed set of real ones.

Every prompt starts with a fresh nonce, so no two requests share a prefix and a server's prefix
cache cannot flatter warm runs. Synthetic prompts come in two modes:
- `words`: text from a fixed technical vocabulary, tokenized by the server itself (/tokenize) and
  sent as token ids, cut to exactly the asked length;
- `random`: token ids drawn uniformly from the model's vocabulary, as `vllm bench`'s random
  dataset does (the posts' synthetic rows); a draft model accepts these differently from prose.
The real prompts are a set of their own, never mixed into a synthetic shape.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from typing import Literal

# Plain technical vocabulary: tokenizes like prose rather than like random token ids.
_WORD_TEXT = (
    "memory bandwidth latency throughput kernel tensor expert layer cache prefill decode token "
    "batch scheduler request stream buffer page node socket module bridge copy transfer offload "
    "weight quantized precision attention head projection matrix vector norm residual gate "
    "router draft accept reject verify sample logits vocabulary prompt output context window "
    "budget slot queue worker rank process thread core clock cycle fetch store load write read "
    "sync barrier reduce gather scatter shard replica pipeline stage overlap stall bubble warmup "
    "cold warm median tail variance profile launcher config flag value limit timeout retry "
    "health ready serve client server engine image container volume mount label port address "
    "host device driver runtime the a of to and in for on with by from at as is are was were be "
    "been this that these those it its we they our their which when where while because although "
    "however therefore then system measure measured result results table figure number shows "
    "test tests run runs ran plan review design reason summary summarise benchmark compare "
    "faster slower higher lower"
)
WORDS = tuple(_WORD_TEXT.split())


def nonce() -> str:
    """A fresh tag for one request: random, so repeated invocations never share a prefix either."""
    return secrets.token_hex(6)


def seeded_tag(seed: int) -> str:
    """The tag for a request on a freshly started server: fixed by the request's seed, so two fresh
    deployments measured with the same seed see the same prompts (their runs compare like for like),
    while the requests of one run set still differ from their first token (seeds are distinct)."""
    return hashlib.sha256(f"gh200-prompt:{seed}".encode()).hexdigest()[:12]


PromptMode = Literal["words", "random"]
PROMPT_MODES: tuple[PromptMode, ...] = ("words", "random")


def random_ids(tag: str, length: int, vocab_size: int, seed: int) -> list[int]:
    """`length` token ids uniform over the vocabulary; the tag (a fresh nonce) makes each unique."""
    rng = random.Random(f"{tag}:{seed}")
    return [rng.randrange(vocab_size) for _ in range(length)]


def synthetic_text(tag: str, n_words: int, seed: int) -> str:
    """Deterministic filler of n_words words, starting with the request's unique tag."""
    rng = random.Random(f"{tag}:{seed}")
    words = [rng.choice(WORDS) for _ in range(n_words)]
    # The tag comes first so that no two prompts share even their first tokens.
    return f"{tag} request: " + " ".join(words)


# The posts' sanity check used four fixed prompts; synthetic prompts overstate draft acceptance.
REAL_PROMPTS: dict[str, str] = {
    "code-review": (
        "Review the following Python function for correctness, performance and readability. "
        "List concrete problems and propose a corrected version.\n\n"
        "def merge_intervals(intervals):\n"
        "    intervals.sort()\n"
        "    out = []\n"
        "    for start, end in intervals:\n"
        "        if out and start <= out[-1][1]:\n"
        "            out[-1][1] = max(out[-1][1], end)\n"
        "        else:\n"
        "            out.append([start, end])\n"
        "    return out\n\n"
        "def total_covered(intervals):\n"
        "    total = 0\n"
        "    for s, e in merge_intervals(intervals):\n"
        "        total += e - s\n"
        "    return total\n"
    ),
    "systems-reasoning": (
        "A workstation has two Grace Hopper modules. Each Hopper GPU has 96 GB of HBM at about "
        "3.7 TB/s, each Grace CPU has 480 GB of LPDDR5X that its local GPU reads at about 380 GB/s, "
        "the remote Grace memory is reachable at about 133 GB/s, and GPU-to-GPU copies are staged at "
        "about 58 GB/s. A mixture-of-experts model does not fit in HBM, so routed experts are "
        "offloaded to CPU memory. Explain step by step where the weights should live, how tensor "
        "parallel ranks should be bound to NUMA nodes, and estimate the decode speed ceiling if each "
        "token streams 21 GiB of active expert weights."
    ),
    "summarisation": (
        "Summarise the following notes in five bullet points for an engineering manager.\n\n"
        "We benchmarked three checkpoints of the same model on a dual-GPU workstation. The FP8 "
        "checkpoint started at 2.4 tokens per second because weights crossed between the two modules; "
        "binding each rank to its local memory raised it to about 20 tokens per second. An INT4 "
        "checkpoint reached 24 tokens per second without speculative decoding. Grafting an FP8 "
        "multi-token-prediction head onto the INT4 base and drafting three tokens lifted the median to "
        "43 tokens per second at a 2048-token prompt, while drafting four tokens gave faster best cases "
        "but collapsed acceptance on long prompts. A CPU-only quantized build ran at 3 to 4 tokens per "
        "second and left both GPUs free."
    ),
    "benchmark-design": (
        "Design a benchmark procedure for comparing speculative decoding settings on a local LLM "
        "server. Cover prompt construction (including how to prevent prefix caching from flattering "
        "repeated runs), forced output lengths, the number of cold and warm runs, which statistics to "
        "report across runs (median, percentiles, coefficient of variation), how to measure draft "
        "acceptance, and a stopping rule for walking the number of speculative tokens upward."
    ),
}


def real_prompt(name: str, tag: str) -> str:
    """One of the fixed real prompts, made unique by a leading request tag."""
    return f"{tag} request.\n{REAL_PROMPTS[name]}"
