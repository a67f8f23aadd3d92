"""The micro-world grammar: captions, VQA questions, NLVR2 statements, text-only sentences.

Every text is lower case, words separated by single spaces, no punctuation, so that a WordPiece
tokenizer round-trips it exactly. Paraphrase comes from synonyms (``SHAPE_WORDS``, ``COLOUR_WORDS``,
``SIZE_WORDS``), optional size adjectives, template choice and mention order.

Two caption styles stand in for the paper's two caption datasets:
- ``coco`` (COCO stand-in): objects related to each other ("a red circle left of a blue square");
- ``flickr`` (Flickr30k stand-in): objects at absolute positions or counted ("there is a red circle
  in the top left corner").
Each caption comes with a ``compact`` fallback ("a red circle and a blue square") used when the full
form does not fit ``max_text_len`` tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from vlmerge_core.data.scenes import CELL_NAMES, COLOURS, SHAPES, Scene

SHAPE_WORDS = {
    "circle": ("circle", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus"),
}
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
}
COLOUR_WORDS = {
    "red": ("red", "crimson"),
    "green": ("green", "emerald"),
    "blue": ("blue", "azure"),
    "yellow": ("yellow", "golden"),
    "purple": ("purple", "violet"),
    "cyan": ("cyan", "turquoise"),
}
# How often a text names a colour by its synonym instead of its canonical word: a ladder from rare
# to even, so that how many synonyms a model has learned from captions grades with its pre-training
# (the text task's val and test sentences name every colour by its synonym).
SYNONYM_RATE = {"red": 0.001, "green": 0.002, "blue": 0.004, "yellow": 0.008, "purple": 0.016, "cyan": 0.032}
SIZE_WORDS = {"large": ("large", "big"), "small": ("small", "little", "tiny")}
NUMBERS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
)
POS_PHRASES = {
    "top left": ("at the top left", "in the top left corner"),
    "top": ("at the top",),
    "top right": ("at the top right", "in the top right corner"),
    "left": ("on the left",),
    "center": ("in the center", "in the middle"),
    "right": ("on the right",),
    "bottom left": ("at the bottom left", "in the bottom left corner"),
    "bottom": ("at the bottom",),
    "bottom right": ("at the bottom right", "in the bottom right corner"),
}
RELATIONS = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
CONVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}


_PLAIN = [False]


@contextlib.contextmanager
def plain_words() -> Iterator[None]:
    """Inside this block, word choices take the first (canonical, shortest) option.

    Every pick consumes exactly one draw either way, so the plain text of an item has the same
    content (objects, answer, truth value) as its paraphrased text for the same RNG state.
    """
    _PLAIN[0] = True
    try:
        yield
    finally:
        _PLAIN[0] = False


def _pick(rng: np.random.Generator, items: tuple | list):
    """A content choice (always one draw)."""
    return items[min(int(rng.random() * len(items)), len(items) - 1)]


def _word(rng: np.random.Generator, items: tuple | list):
    """A wording choice (always one draw): the first option in plain mode."""
    item = _pick(rng, items)
    return items[0] if _PLAIN[0] else item


def colour_word(rng: np.random.Generator, colour: str) -> str:
    """A colour's word (always one draw): its synonym with probability ``SYNONYM_RATE[colour]``,
    else its canonical word; the canonical word in plain mode."""
    synonym = rng.random() < SYNONYM_RATE[colour]
    return COLOUR_WORDS[colour][1 if synonym and not _PLAIN[0] else 0]


def cell_name(o: dict) -> str:
    """The "where" answer of an object: its grid cell name ("top left", "center", ...)."""
    return CELL_NAMES[o["row"]][o["col"]]


def noun_phrase(rng: np.random.Generator, o: dict, det: str = "a", p_size: float = 0.5) -> str:
    """A referring noun phrase with synonyms and an optional size adjective."""
    words = [det] if det else []
    size = _word(rng, SIZE_WORDS[o["size"]])
    if rng.random() < p_size and not _PLAIN[0]:
        words.append(size)
    words += [colour_word(rng, o["colour"]), _word(rng, SHAPE_WORDS[o["shape"]])]
    return " ".join(words)


def relations(a: dict, b: dict) -> list[str]:
    """Relations (keys of ``RELATIONS``) that hold of object ``a`` with respect to ``b``."""
    out = []
    if a["col"] < b["col"]:
        out.append("left")
    if a["col"] > b["col"]:
        out.append("right")
    if a["row"] < b["row"]:
        out.append("above")
    if a["row"] > b["row"]:
        out.append("below")
    return out


def _rel(rng: np.random.Generator, a: dict, b: dict) -> str:
    return _word(rng, RELATIONS[_pick(rng, relations(a, b))])


def compact_caption(objects: list[dict]) -> str:
    """Short fallback caption naming every object by colour and shape."""
    nps = [f"a {o['colour']} {o['shape']}" for o in objects]
    return nps[0] if len(nps) == 1 else " ".join(nps[:-1]) + " and " + nps[-1]


def caption(rng: np.random.Generator, scene: Scene, style: str) -> tuple[str, str]:
    """A (full, compact) caption pair of ``scene`` in ``style`` ("coco" or "flickr")."""
    objs = [scene["objects"][i] for i in rng.permutation(len(scene["objects"]))]
    nps = [noun_phrase(rng, o) for o in objs]
    n = len(objs)
    if style == "coco":
        if n == 1:
            text = _word(
                rng, ("a picture of {0}", "{0} by itself", "{0} on a plain background", "an image of {0}")
            ).format(nps[0])
        else:
            head = _word(rng, ("{0} {r} {1}", "{0} is {r} {1}", "a picture of {0} {r} {1}"))
            text = head.format(nps[0], nps[1], r=_rel(rng, objs[0], objs[1]))
            rest = [
                f"{npx} {_rel(rng, o, objs[0])} the {o0}" if rng.random() < 0.5 else npx
                for npx, o, o0 in zip(
                    nps[2:], objs[2:], [f"{objs[0]['colour']} {objs[0]['shape']}"] * (n - 2)
                )
            ]
            text = " and ".join([text, *rest])
    elif style == "flickr":
        pos = [_word(rng, POS_PHRASES[cell_name(o)]) for o in objs]
        form = _pick(rng, (0, 1) if n == 1 else (0, 1, 2) if n == 2 else (0, 2))  # form 1 is too long for 3
        if form == 0:
            parts = [f"{npx} {p}" for npx, p in zip(nps, pos)]
            text = parts[0] if n == 1 else " ".join(parts[:-1]) + " and " + parts[-1]
            text = ("there is " + text) if rng.random() < 0.5 and n < 3 else text
        elif form == 1:
            text = " and ".join(f"{p} there is {npx}" for npx, p in zip(nps, pos))
        else:
            text = f"there are {NUMBERS[n]} shapes " + " ".join(nps[:-1]) + " and " + nps[-1]
    else:
        raise KeyError(f"unknown caption style {style!r}; expected 'coco' or 'flickr'")
    return text, compact_caption(objs)


# --------------------------------------------------------------------------------------------- VQA
QTYPES = ("colour", "shape", "count", "exist", "where")


def answer_vocab(max_objects: int) -> list[str]:
    """All VQA answers, sorted: colours, shapes, counts 0..max_objects, yes/no, cell names."""
    cells = [c for row in CELL_NAMES for c in row]
    return sorted(set(COLOURS) | set(SHAPES) | set(NUMBERS[: max_objects + 1]) | {"yes", "no"} | set(cells))


def answers_of_type(qtype: str, max_objects: int) -> list[str]:
    """Every answer a question of ``qtype`` can have (the pool of an annotator's mistakes)."""
    cells = [c for row in CELL_NAMES for c in row]
    pools = {
        "colour": list(COLOURS),
        "shape": list(SHAPES),
        "count": list(NUMBERS[: max_objects + 1]),
        "exist": ["yes", "no"],
        "where": cells,
    }
    if qtype not in pools:
        raise KeyError(f"unknown VQA question type {qtype!r}; expected one of {QTYPES}")
    return pools[qtype]


def vqa_item(rng: np.random.Generator, scene: Scene) -> tuple[str, str, str]:
    """One (question, answer, qtype) about ``scene``."""
    objs = scene["objects"]
    qtype = _pick(rng, QTYPES)
    shapes = [o["shape"] for o in objs]
    colours = [o["colour"] for o in objs]
    if qtype == "colour":
        uniq = [o for o in objs if shapes.count(o["shape"]) == 1]
        if not uniq:
            qtype = "where"
        else:
            o = _pick(rng, uniq)
            q = _word(
                rng, ("what color is the {s}", "what is the color of the {s}", "which color is the {s}")
            )
            return q.format(s=_word(rng, SHAPE_WORDS[o["shape"]])), o["colour"], qtype
    if qtype == "shape":
        uniq = [o for o in objs if colours.count(o["colour"]) == 1]
        if not uniq:
            qtype = "where"
        else:
            o = _pick(rng, uniq)
            q = _word(rng, ("what shape is the {c} object", "what is the {c} shape", "which shape is {c}"))
            return q.format(c=colour_word(rng, o["colour"])), o["shape"], qtype
    if qtype == "count":
        kind = int(rng.integers(3))
        if kind == 0:
            return (
                _word(rng, ("how many objects are there", "how many shapes are there")),
                NUMBERS[len(objs)],
                qtype,
            )
        if kind == 1:
            s = _pick(rng, shapes) if rng.random() < 0.5 else _pick(rng, SHAPES)
            return f"how many {PLURALS[s]} are there", NUMBERS[shapes.count(s)], qtype
        c = _pick(rng, colours) if rng.random() < 0.5 else _pick(rng, COLOURS)
        return f"how many {colour_word(rng, c)} objects are there", NUMBERS[colours.count(c)], qtype
    if qtype == "exist":
        present = {(o["shape"], o["colour"]) for o in objs}
        if rng.random() < 0.5:
            s, c = _pick(rng, sorted(present))
        else:
            absent = sorted({(s, c) for s in SHAPES for c in COLOURS} - present)
            s, c = _pick(rng, absent)
        q = f"is there a {colour_word(rng, c)} {_word(rng, SHAPE_WORDS[s])}"
        return q, "yes" if (s, c) in present else "no", qtype
    o = _pick(rng, objs)  # where
    q = _word(rng, ("where is the {np}", "where is the {np} located", "in which part is the {np}"))
    return q.format(np=noun_phrase(rng, o, det="", p_size=0.3)), cell_name(o), "where"


# ------------------------------------------------------------------------------------------- NLVR2
def _has(scene: Scene, shape: str | None = None, colour: str | None = None) -> bool:
    return any(
        (shape is None or o["shape"] == shape) and (colour is None or o["colour"] == colour)
        for o in scene["objects"]
    )


NLVR2_KINDS = ("contains", "both", "exactly_one", "neither")


def nlvr2_statement(rng: np.random.Generator, left: Scene, right: Scene, kind: str) -> tuple[str, bool]:
    """A statement of ``kind`` (one of ``NLVR2_KINDS``) about an image pair, and its truth value.

    Every statement is about the presence of an object (shape and colour, or shape alone, or colour
    alone) in one or both images: what a model that matches text to images can decide, the way the
    real NLVR2's statements are decided from what each image shows.
    """
    pool = left["objects"] + right["objects"]
    o = (
        _pick(rng, pool)
        if rng.random() < 0.6
        else {"shape": _pick(rng, SHAPES), "colour": _pick(rng, COLOURS)}
    )
    s, c = o["shape"], o["colour"]
    sw, cw = _word(rng, SHAPE_WORDS[s]), colour_word(rng, c)
    which = _pick(rng, ("kind",))  # the statement names an object by colour and shape, as captions do
    has = {
        "kind": lambda sc: _has(sc, s, c),
        "shape": lambda sc: _has(sc, s),
        "colour": lambda sc: _has(sc, colour=c),
    }[which]
    np_ = {"kind": f"a {cw} {sw}", "shape": f"a {sw}", "colour": f"a {cw} object"}[which]
    if kind == "contains":
        side, sc = ("left", left) if rng.random() < 0.5 else ("right", right)
        return f"the {side} image contains {np_}", has(sc)
    if kind == "both":
        return f"both images contain {np_}", has(left) and has(right)
    if kind == "exactly_one":
        return f"exactly one image contains {np_}", has(left) != has(right)
    if kind == "neither":
        return f"neither image contains {np_}", not (has(left) or has(right))
    raise KeyError(f"unknown NLVR2 statement kind {kind!r}; expected one of {NLVR2_KINDS}")


# ------------------------------------------------------------------------------ text-only sentences
def text_cls_item(rng: np.random.Generator, colour: str, synonym: bool) -> tuple[str, int]:
    """A one-object sentence and its label, the index of the object's colour (6 classes).

    The text task (a stand-in for a GLUE task that needs word meanings learned in pre-training): the
    training split names each colour by its canonical word, val and test by its synonym (``crimson``
    for red, ..., ``turquoise`` for cyan). A model that learned from image captions that crimson is red
    classifies those test sentences; a model trained from scratch on the labelled sentences alone has
    never seen the synonyms with a label. The synonyms are rare to even in captions
    (:data:`SYNONYM_RATE`), so the accuracy grades how much of the vocabulary pre-training taught
    rather than saturating. Shape, size and position words vary freely and carry no information
    about the label.
    """
    cw = COLOUR_WORDS[colour][1 if synonym else 0]
    sw = _word(rng, SHAPE_WORDS[_pick(rng, SHAPES)])
    size = _word(rng, SIZE_WORDS[_pick(rng, SIZES_ORDER)])
    pos = _word(rng, POS_PHRASES[_pick(rng, tuple(POS_PHRASES))])
    template = _pick(
        rng,
        (
            "a {size} {c} {s} {pos}",
            "there is a {c} {s} {pos}",
            "{pos} there is a {size} {c} {s}",
            "the {s} {pos} is {c}",
            "a picture of a {size} {c} {s}",
        ),
    )
    return template.format(size=size, c=cw, s=sw, pos=pos), COLOURS.index(colour)


SIZES_ORDER = ("small", "large")
TEXT_LABELS = COLOURS  # the text task's classes


def fact_sentence(rng: np.random.Generator) -> str:
    """A filler sentence of general world knowledge for the text-only corpus."""
    s, c = _pick(rng, SHAPES), _pick(rng, COLOURS)
    corners = {"circle": "no", "square": "four", "triangle": "three", "diamond": "four", "cross": "twelve"}
    return _pick(
        rng,
        (
            f"a {s} has {corners[s]} corners",
            f"{PLURALS[s]} can be {c} or {_pick(rng, COLOURS)}",
            f"a {_word(rng, SHAPE_WORDS[s])} is a kind of shape",
            f"the color {colour_word(rng, c)} is a bright color",
            f"many pictures show {PLURALS[s]} and {PLURALS[_pick(rng, SHAPES)]}",
            f"a {_word(rng, SIZE_WORDS['large'])} {s} is bigger than a {_word(rng, SIZE_WORDS['small'])} one",
        ),
    )
