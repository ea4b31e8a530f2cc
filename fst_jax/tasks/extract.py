"""Answer extraction shared by the verifiers: `\\boxed{}`, CodeI/O JSON, numbers, closeness.

Behaviour follows the original checkers: the last `\\boxed{...}`
with brace matching (DeepScaleR / the star-graph repo), the last complete top-level JSON object
with CodeI/O's fallbacks, and CodeI/O's `is_close`. Every function returns a value or a reason;
none raises on model text, however malformed.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from typing import Any

MAX_JSON_CHARS = 100_000
MAX_JSON_DEPTH = 64
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> tuple[str | None, str]:
    """Content of the last `\\boxed{...}` (nested braces allowed) -> (content, reason).

    reason is "ok", "no_boxed" (none present) or "unclosed" (the last one never closes).
    """
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None, "no_boxed"
    start = starts[-1]
    depth = 1
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip(), "ok"
    return None, "unclosed"


def _scan_objects(text: str) -> list[tuple[int, int, int]]:
    """Spans (start, end, max_depth) of complete top-level `{...}` objects, string-aware inside."""
    spans = []
    depth = 0
    max_depth = 0
    start = -1
    in_str = False
    escape = False
    for i, ch in enumerate(text):
        if depth > 0 and in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
            continue
        if ch == "{":
            if depth == 0:
                start = i
                max_depth = 0
            depth += 1
            max_depth = max(max_depth, depth)
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1, max_depth))
        elif ch == '"' and depth > 0:
            in_str = True
    return spans


def _loads_lenient(s: str) -> tuple[Any, str]:
    """json.loads with CodeI/O's fallbacks: Python literals, escaped braces, tuples."""
    if len(s) > MAX_JSON_CHARS:
        return None, f"the JSON answer is {len(s)} characters long (limit {MAX_JSON_CHARS})"
    attempts = [s]
    py = re.sub(r"\bTrue\b", "true", s)
    py = re.sub(r"\bFalse\b", "false", py)
    py = re.sub(r"\bNone\b", "null", py)
    attempts.append(py)
    attempts.append(py.replace("\\{", "{").replace("\\}", "}"))
    attempts.append(attempts[-1].replace("(", "[").replace(")", "]").replace("'", '"'))
    for a in attempts:
        try:
            return json.loads(a), "ok"
        except RecursionError:
            return None, "the JSON answer is nested too deeply"
        except (ValueError, TypeError):
            continue
    return None, "the JSON answer could not be parsed"


def extract_last_json(text: str) -> tuple[Any, str]:
    """CodeI/O extraction: last ```json fence, else last complete top-level object, else boxed.

    Returns (value, "ok") or (None, reason).
    """
    fences = re.findall(r"```json\s*(.*?)```", text, flags=re.S)
    candidates: list[str] = []
    if fences:
        candidates.append(fences[-1].strip())
    spans = _scan_objects(text)
    if spans:
        s, e, depth = spans[-1]
        if depth > MAX_JSON_DEPTH:
            return None, f"the JSON answer is nested {depth} levels deep (limit {MAX_JSON_DEPTH})"
        candidates.append(text[s:e])
    boxed, _ = last_boxed(text)
    if boxed:
        candidates.append(boxed)
    if not candidates:
        return None, "no complete JSON object found"
    reason = "no complete JSON object found"
    for c in candidates:
        value, reason = _loads_lenient(c)
        if reason == "ok":
            return value, "ok"
    return None, reason


def is_close(pred: Any, gold: Any, rel_tol: float = 1e-3, _depth: int = 0) -> bool:
    """CodeI/O closeness: dict keys equal + values close; lists elementwise; floats within
    `rel_tol * |gold|` with equal integer parts (NaN/inf rejected); everything else `==`."""
    if _depth > MAX_JSON_DEPTH:
        return False
    if isinstance(gold, dict):
        if not isinstance(pred, dict) or set(pred) != set(gold):
            return False
        return all(is_close(pred[k], gold[k], rel_tol, _depth + 1) for k in gold)
    if isinstance(gold, list | tuple):
        if not isinstance(pred, list | tuple) or len(pred) != len(gold):
            return False
        return all(is_close(p, g, rel_tol, _depth + 1) for p, g in zip(pred, gold))
    num = (int, float)
    if (
        isinstance(pred, num)
        and isinstance(gold, num)
        and (isinstance(pred, float) or isinstance(gold, float))
    ):
        p, g = float(pred), float(gold)
        if not (math.isfinite(p) and math.isfinite(g)):
            return False
        return abs(p - g) <= rel_tol * abs(g) and int(p) == int(g)
    try:
        return bool(pred == gold)
    except Exception:
        return False


_NUM_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_number(text: str) -> float | Fraction | None:
    """Parse a short numeric answer: '1,234', '3/4', '\\frac{3}{4}', '2.5 m/s', '3 \\times 10^{5}',
    '$12$', '45\\%'. Returns an exact Fraction when possible, else float; None if no number."""
    s = text.strip()
    s = re.sub(r"\\text\{[^{}]*\}|\\mathrm\{[^{}]*\}", " ", s)
    s = s.replace("$", "").replace("\\%", "").replace("%", "").replace("\\!", "").replace("\\,", "")
    s = s.replace("−", "-").replace("\\left", "").replace("\\right", "")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)
    m = re.match(r"^\s*([-+]?)\s*\\d?frac\{([^{}]+)\}\{([^{}]+)\}", s)
    if m:
        num, den = parse_number(m.group(2)), parse_number(m.group(3))
        if num is None or den in (None, 0):
            return None
        val = Fraction(num) / Fraction(den) if _exact(num, den) else float(num) / float(den)
        return -val if m.group(1) == "-" else val
    m = re.match(r"^\s*([-+]?\d+)\s*/\s*(\d+)\s*$", s)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    m = re.match(
        r"^\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*(?:\\times|\\cdot|×|\*|x)\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?",
        s,
    )
    if m:
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
    m = _NUM_RE.search(s)
    # Only a leading number (units may follow), optionally after "x =": "the answer is 5" is not.
    if not m or not re.fullmatch(r"\s*(?:[A-Za-z]\w*\s*=\s*)?", s[: m.start()]):
        return None
    token = m.group(0)
    try:
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        try:
            return float(token)
        except ValueError:
            return None


def _exact(*vals) -> bool:
    return all(isinstance(v, Fraction) for v in vals)


def numbers_close(pred: float | Fraction, gold: float | Fraction, rel_tol: float) -> bool:
    """Exact equality for rel_tol == 0 (Fractions), else relative tolerance (abs for gold 0)."""
    if rel_tol == 0:
        return Fraction(pred) == Fraction(gold)
    p, g = float(pred), float(gold)
    if not (math.isfinite(p) and math.isfinite(g)):
        return False
    return abs(p - g) <= rel_tol * max(abs(g), 1e-12)
