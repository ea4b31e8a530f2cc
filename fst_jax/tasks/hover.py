"""HoVer / HoVer-hard: multi-hop claim verification as a retrieval task (GEPA's setup).

Formulation (single turn): the question shows the claim and
the top-k1 BM25 documents retrieved with the claim (hop 1). The policy writes follow-up search
queries ("Query: ..." lines); each is run through BM25 (top-k2). Reward = 1 when every gold
supporting document is among all retrieved documents (GEPA's HoVer metric); with
`with_label=True` the policy must also output "Label: SUPPORTED|NOT_SUPPORTED" correctly (the
official HoVer score). Feedback: gold titles found (and at which hop) vs missed, and the label.

Sources: offline synthetic encyclopedia (fictional countries, cities, people, companies, bands
with functional relations; claims chain k relations, NOT_SUPPORTED swaps the final entity), or
the real HoVer release JSON / HF `hover` rows plus a Wikipedia-abstract corpus JSONL
(`title`, `text` as string or sentence list). "hover" = 3-document claims (as GEPA);
"hover_hard" = 4-document claims (a harder-by-construction proxy; filter further by base pass
rate with `subsets.build_hard_subset`).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict

import numpy as np

from fst_jax.tasks.base import Example, Task, Verdict, example_id, register_task, split_of
from fst_jax.tasks.loaders import load_rows, require

CORPUS_VERSION = 1
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "is",
        "was",
        "were",
        "be",
        "by",
        "for",
        "and",
        "or",
        "with",
        "as",
        "it",
        "its",
        "that",
        "this",
        "from",
        "who",
        "which",
        "someone",
    ]
)


def tokenize(text: str) -> list[str]:
    toks = re.findall(r"[a-z0-9]+", text.lower())
    return [t[:-1] if len(t) > 3 and t.endswith("s") else t for t in toks if t not in _STOP]


class BM25:
    """Okapi BM25 (k1=0.9, b=0.4 as in GEPA's HoVer retriever) over "title | text" documents.

    Per-posting weights are precomputed, so a query is a few numpy scatter-adds.
    """

    def __init__(self, docs: list[str], k1: float = 0.9, b: float = 0.4):
        self.docs, self.k1, self.b = docs, k1, b
        tfs = [Counter(tokenize(d)) for d in docs]
        lens = np.array([sum(tf.values()) for tf in tfs], dtype=np.float64)
        avg = float(lens.mean()) if len(docs) else 1.0
        postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, tf in enumerate(tfs):
            for t, c in tf.items():
                postings[t].append((i, c))
        n = len(docs)
        self.index: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for t, plist in postings.items():
            idx = np.array([i for i, _ in plist], dtype=np.int64)
            tf = np.array([c for _, c in plist], dtype=np.float64)
            idf = math.log(1 + (n - len(plist) + 0.5) / (len(plist) + 0.5))
            norm = tf + k1 * (1 - b + b * lens[idx] / avg)
            self.index[t] = (idx, idf * tf * (k1 + 1) / norm)

    def scores(self, query: str) -> np.ndarray:
        out = np.zeros(len(self.docs))
        for t in sorted(set(tokenize(query))):  # fixed order: float sums identical across runs
            if t in self.index:
                idx, w = self.index[t]
                out[idx] += w
        return out

    def search(self, query: str, k: int) -> list[int]:
        sc = self.scores(query)
        order = np.argsort(-sc, kind="stable")[:k]  # ties: lower index first
        return [int(i) for i in order if sc[i] > 0]


# --- synthetic encyclopedia -------------------------------------------------------------------
_SYL = (
    "ka",
    "lo",
    "mi",
    "ren",
    "tor",
    "va",
    "zel",
    "qu",
    "bri",
    "dan",
    "fen",
    "gro",
    "hal",
    "jus",
    "ner",
    "pol",
    "sar",
    "tiv",
    "umb",
    "wex",
    "yor",
    "cal",
    "dor",
    "mar",
    "sil",
)
_OCCUPATIONS = ("painter", "chemist", "novelist", "architect", "violinist", "engineer", "judge")
_INDUSTRIES = ("shipping", "software", "textile", "mining", "publishing", "brewing")
_GENRES = ("jazz", "folk", "punk", "synth-pop", "blues", "metal")
_CONTINENTS = ("Aurelia", "Borealis", "Meridia")
# relation -> (source type, target type, verb phrase, noun phrase)
RELATIONS = {
    "born_in": ("person", "city", "was born in {x}", "someone born in {x}"),
    "works_for": ("person", "company", "works for {x}", "someone who works for {x}"),
    "located_in": ("city", "country", "is located in {x}", "a city in {x}"),
    "founded_by": (None, "person", "was founded by {x}", "{kind} founded by {x}"),
    "headquartered_in": (
        "company",
        "city",
        "is headquartered in {x}",
        "a company headquartered in {x}",
    ),
    "formed_in": ("band", "city", "was formed in {x}", "a band formed in {x}"),
    "signed_to": ("band", "company", "is signed to {x}", "a band signed to {x}"),
}
# Longest chain that can still start from an entity of each type (cycles via works_for).
_DEPTH = {"country": 0, "city": 1, "person": 99, "company": 99, "band": 99}
OUT_RELATIONS = {
    "person": ("born_in", "works_for"),
    "city": ("located_in",),
    "company": ("founded_by", "headquartered_in"),
    "band": ("signed_to", "founded_by", "formed_in"),
    "country": (),
}


def _names(rng: random.Random, n: int, parts: int, taken: set) -> list[str]:
    out = []
    while len(out) < n:
        name = "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def build_world(seed: int = 0, scale: int = 1):
    """Entities {title: {"type", relations...}} and docs {title: "title | text"}; deterministic."""
    rng = random.Random(f"hover-world:v{CORPUS_VERSION}:{seed}:{scale}")
    taken: set = set()
    ent: dict[str, dict] = {}
    countries = [n + "ia" for n in _names(rng, 24 * scale, 2, taken)]
    cities = _names(rng, 120 * scale, 3, taken)
    firsts = _names(rng, 60, 2, taken)
    lasts = _names(rng, 60, 3, taken)
    people = rng.sample([f"{f} {s}" for f in firsts for s in lasts], 480 * scale)
    companies = [
        f"{n} {rng.choice(['Records', 'Group', 'Works', 'Holdings'])}"
        for n in _names(rng, 160 * scale, 2, taken)
    ]
    bands = [f"The {n}s" for n in _names(rng, 160 * scale, 2, taken)]
    docs = {}
    for c in countries:
        ent[c] = {"type": "country"}
        docs[c] = (
            f"{c} is a country in {rng.choice(_CONTINENTS)}. Its currency is the "
            f"{rng.choice(_SYL).capitalize()}{rng.choice(_SYL)}."
        )
    for c in cities:
        ent[c] = {"type": "city", "located_in": rng.choice(countries)}
        docs[c] = (
            f"{c} is a city in {ent[c]['located_in']} with about {rng.randint(2, 900)},000 inhabitants."
        )
    for p in people:
        ent[p] = {"type": "person", "born_in": rng.choice(cities)}
    for c in companies:
        ent[c] = {
            "type": "company",
            "founded_by": rng.choice(people),
            "headquartered_in": rng.choice(cities),
        }
        docs[c] = (
            f"{c} is a {rng.choice(_INDUSTRIES)} company founded in {rng.randint(1920, 2015)} by "
            f"{ent[c]['founded_by']}. It is headquartered in {ent[c]['headquartered_in']}."
        )
    for p in people:
        ent[p]["works_for"] = rng.choice(companies)
        docs[p] = (
            f"{p} (born {rng.randint(1900, 1999)}) is a {rng.choice(_OCCUPATIONS)} born in "
            f"{ent[p]['born_in']}. {p.split()[0]} works for {ent[p]['works_for']}."
        )
    for b in bands:
        ent[b] = {
            "type": "band",
            "founded_by": rng.choice(people),
            "formed_in": rng.choice(cities),
            "signed_to": rng.choice(companies),
        }
        docs[b] = (
            f"{b} is a {rng.choice(_GENRES)} band formed in {ent[b]['formed_in']} in "
            f"{rng.randint(1960, 2020)} by {ent[b]['founded_by']}. The band is signed to "
            f"{ent[b]['signed_to']}."
        )
    return ent, {t: f"{t} | {d}" for t, d in docs.items()}


_TYPE_CACHE: dict[int, dict[str, list[str]]] = {}


def _by_type(ent: dict) -> dict[str, list[str]]:
    key = id(ent)
    if key not in _TYPE_CACHE:
        groups: dict[str, list[str]] = defaultdict(list)
        for t, e in ent.items():
            groups[e["type"]].append(t)
        _TYPE_CACHE.clear()
        _TYPE_CACHE[key] = dict(groups)
    return _TYPE_CACHE[key]


def make_claim(rng: random.Random, ent: dict, hops: int):
    """A k-hop claim: (text, supporting titles, label) or None if the walk dead-ends."""
    starts = [t for t, e in ent.items() if _DEPTH[e["type"]] >= hops]
    chain, rels = [rng.choice(starts)], []
    for step in range(hops):
        left = hops - step - 1
        outs = [
            r
            for r in OUT_RELATIONS[ent[chain[-1]]["type"]]
            if _DEPTH[ent[ent[chain[-1]][r]]["type"]] >= left
        ]
        if not outs:
            return None
        r = rng.choice(outs)
        rels.append(r)
        nxt = ent[chain[-1]][r]
        if nxt in chain:  # no cycles: every supporting document must be distinct
            return None
        chain.append(nxt)
    final = chain[-1]
    label = "SUPPORTED"
    if rng.random() < 0.5:
        same = _by_type(ent)[ent[final]["type"]]
        final, label = rng.choice([t for t in same if t != final]), "NOT_SUPPORTED"
    phrase = final
    for i in range(hops - 1, 0, -1):  # describe chain[i] by its relation to the next entity
        kind = "a band" if ent[chain[i]]["type"] == "band" else "a company"
        phrase = RELATIONS[rels[i]][3].format(x=phrase, kind=kind)
    claim = f"{chain[0]} {RELATIONS[rels[0]][2].format(x=phrase)}."
    return claim, chain[:-1], label


@register_task("hover")
class HoverTask(Task):
    """Claim verification by multi-hop retrieval. kwargs: hops, k_hop1, k_query, max_queries,
    with_label, source ('synthetic'|'real') with path/hf_id/tfds_* and corpus_path."""

    name = "hover"
    hard = False

    def __init__(
        self,
        source: str = "synthetic",
        hops: int | None = None,
        k_hop1: int = 5,
        k_query: int = 5,
        max_queries: int | None = None,
        with_label: bool = False,
        seed: int = 0,
        corpus_seed: int = 0,
        sizes: dict | None = None,
        path: str | None = None,
        hf_id: str | None = None,
        tfds_name: str | None = None,
        tfds_dir: str | None = None,
        corpus_path: str | None = None,
    ):
        super().__init__()
        if source not in ("synthetic", "real"):
            raise ValueError(f"hover source {source!r}: use 'synthetic' or 'real'.")
        self.hops = hops or (4 if self.hard else 3)
        if not 1 <= self.hops <= 6:
            raise ValueError(f"hover hops={self.hops}: use 1..6.")
        if source == "real" and not corpus_path:
            raise ValueError(
                "hover source='real' needs corpus_path=<wiki abstracts .jsonl with "
                "'title' and 'text'> (HotpotQA's wiki.abstracts.2017)."
            )
        self.source, self.seed, self.corpus_seed = source, seed, corpus_seed
        self.k_hop1, self.k_query, self.with_label = k_hop1, k_query, with_label
        self.max_queries = max_queries or self.hops  # enough for every hop, like GEPA's program
        default = (
            {"train": 150, "validation": 300, "test": 300}
            if source == "real"
            else {"train": 2048, "validation": 256, "test": 256}
        )
        self.sizes = {**default, **(sizes or {})}
        self.real = {"path": path, "hf_id": hf_id, "tfds_name": tfds_name, "tfds_dir": tfds_dir}
        self.corpus_path = corpus_path
        self._titles: list[str] | None = None
        self._bm25: BM25 | None = None
        self._ent: dict | None = None
        self._pos: dict[str, int] | None = None
        self.seed_prompt = (
            "Write search queries that find every document needed to check the claim: look for "
            "entities that the claim describes indirectly."
        )

    # --- corpus -----------------------------------------------------------------------------
    def _corpus(self) -> tuple[list[str], BM25]:
        if self._bm25 is None:
            if self.source == "synthetic":
                self._ent, docs = build_world(self.corpus_seed)
            else:
                docs = {}
                for n, row in enumerate(load_rows(path=self.corpus_path)):
                    require(row, {"title": str}, f"hover corpus row {n}")
                    text = row.get("text", row.get("abstract", ""))
                    text = " ".join(text) if isinstance(text, list) else str(text)
                    docs[row["title"]] = f"{row['title']} | {text}"
            self._titles = list(docs)
            self._bm25 = BM25([docs[t] for t in self._titles])
        assert self._titles is not None
        return self._titles, self._bm25

    def _doc(self, title: str) -> str:
        titles, bm25 = self._corpus()
        if self._pos is None:
            self._pos = {t: i for i, t in enumerate(titles)}
        return bm25.docs[self._pos[title]]

    def retrieve(self, query: str, k: int) -> list[str]:
        titles, bm25 = self._corpus()
        return [titles[i] for i in bm25.search(query, k)]

    # --- examples ---------------------------------------------------------------------------
    def _example(self, claim: str, gold_titles: list[str], label: str, meta: dict) -> Example:
        titles, bm25 = self._corpus()
        hop1 = [titles[i] for i in bm25.search(claim, self.k_hop1)]
        docs = "\n".join(f"[{j + 1}] {self._doc(t)}" for j, t in enumerate(hop1))
        ask = (
            f"Write up to {self.max_queries} search queries for the missing documents, one per "
            'line, each starting with "Query:".'
        )
        if self.with_label:
            ask += ' Then write "Label: SUPPORTED" or "Label: NOT_SUPPORTED".'
        q = f"Claim: {claim}\n\nRetrieved documents:\n{docs}\n\n{ask}"
        gold = {"titles": list(dict.fromkeys(gold_titles)), "label": label, "hop1": hop1}
        return Example(example_id(self.name, q), q, gold, {"claim": claim, **meta})

    def _load_split(self, split: str) -> list[Example]:
        if self.source == "real":
            return self._real(split)
        ent = (self._corpus(), self._ent)[1]
        out, seen, i = [], set(), 0
        while len(out) < self.sizes[split]:
            rng = random.Random(f"hover:{self.seed}:{self.hops}:{i}")
            i += 1
            made = make_claim(rng, ent, self.hops)
            if made is None:
                continue
            claim, titles, label = made
            ex = self._example(claim, titles, label, {"num_hops": self.hops, "index": i - 1})
            if split_of(ex.question) == split and ex.id not in seen:
                seen.add(ex.id)
                out.append(ex)
            if i > 200 * self.sizes[split] + 10_000:
                raise RuntimeError(f"hover: cannot fill split {split!r}; lower sizes.")
        return out

    def _real(self, split: str) -> list[Example]:
        rows = load_rows(**{k: v for k, v in self.real.items() if v})
        claims = []
        for n, row in enumerate(rows):
            where = f"hover row {n}"
            require(row, {"claim": str, "supporting_facts": list}, where)
            titles = []
            for j, f in enumerate(row["supporting_facts"]):
                if isinstance(f, dict) and "key" in f:
                    titles.append(f["key"])  # HF `hover` format
                elif isinstance(f, list | tuple) and f and isinstance(f[0], str):
                    titles.append(f[0])  # release JSON: [title, sentence index]
                else:
                    raise ValueError(
                        f"{where}, supporting_facts[{j}]: expected [title, sent_id] or "
                        f"{{'key': title, 'value': sent_id}}, got {f!r}."
                    )
            label = row.get("label", "SUPPORTED")
            label = {0: "NOT_SUPPORTED", 1: "SUPPORTED"}.get(label, label)
            if label not in ("SUPPORTED", "NOT_SUPPORTED"):
                raise ValueError(
                    f"{where}: label {label!r} must be SUPPORTED/NOT_SUPPORTED or 1/0."
                )
            titles = list(dict.fromkeys(titles))
            if len(titles) == self.hops:  # GEPA keeps claims with exactly 3 unique documents
                claims.append((row["claim"], titles, label, n))
        # GEPA's split: shuffle with Random(0); 40% test / 40% validation / 20% train.
        random.Random(0).shuffle(claims)
        a, b = int(0.4 * len(claims)), int(0.8 * len(claims))
        part = {"test": claims[:a], "validation": claims[a:b], "train": claims[b:]}[split]
        part = random.Random(1).sample(part, min(len(part), self.sizes[split]))
        return [
            self._example(c, t, lab, {"num_hops": self.hops, "row": n}) for c, t, lab, n in part
        ]

    # --- verification -----------------------------------------------------------------------
    def _verify(self, example: Example, completion: str) -> Verdict:
        gold = example.gold
        queries = [
            m.strip() for m in re.findall(r"(?im)^\s*\**query\s*\d*\**\s*:\s*(.+)$", completion)
        ]
        queries = [q for q in queries if q][: self.max_queries]
        found_at = {t: "hop 1" for t in gold["hop1"]}
        for j, q in enumerate(queries):
            for t in self.retrieve(q, self.k_query):
                found_at.setdefault(t, f"query {j + 1}")
        hits = [t for t in gold["titles"] if t in found_at]
        missed = [t for t in gold["titles"] if t not in found_at]
        parts = []
        if not queries:
            parts.append('No "Query: ..." lines found.')
        if hits:
            parts.append("Found: " + ", ".join(f"{t} ({found_at[t]})" for t in hits) + ".")
        if missed:
            parts.append("Missed: " + ", ".join(missed) + ".")
        parts.append(
            f"The gold documents are {', '.join(gold['titles'])}; the claim is {gold['label']}."
        )
        ok = not missed
        if self.with_label:
            m = re.findall(r"(?i)label\s*:\s*\**\s*(not[_ ]supported|supported)", completion)
            pred = m[-1].upper().replace(" ", "_") if m else None
            if pred is None:
                parts.insert(0, 'No "Label: ..." line found.')
            elif pred != gold["label"]:
                parts.insert(0, f"The label {pred} is wrong.")
            ok = ok and pred == gold["label"]
        status = "correct" if ok else ("no_answer" if not queries else "incomplete")
        return Verdict(1.0 if ok else 0.0, status, " ".join(parts))


@register_task("hover_hard")
class HoverHardTask(HoverTask):
    """HoVer-hard: 4-document claims (filter by pass rate with subsets.build_hard_subset)."""

    name = "hover_hard"
    hard = True
