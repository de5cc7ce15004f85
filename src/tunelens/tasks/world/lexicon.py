"""The words of the instruction world: semantic categories and label words.

Category words and label words are disjoint, so a label can never be confused
with an input word. Every word is a single lower-case token of the world
tokenizer.
"""

from __future__ import annotations

CATEGORIES: dict[str, tuple[str, ...]] = {
    "animal": ("cat", "dog", "horse", "lion", "tiger", "mouse", "rabbit", "wolf",
               "bear", "fox", "goat", "sheep", "deer", "camel"),
    "fruit": ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear",
              "plum", "melon", "kiwi", "lime", "orange", "papaya"),
    "colour": ("red", "blue", "green", "yellow", "purple", "pink", "brown", "black",
               "white", "grey", "violet", "indigo", "beige", "crimson"),
    "tool": ("hammer", "saw", "drill", "wrench", "chisel", "shovel", "rake", "axe",
             "pliers", "screwdriver", "ladder", "trowel", "spanner", "mallet"),
    "place": ("city", "village", "forest", "desert", "island", "valley", "harbour",
              "castle", "market", "garden", "beach", "museum", "airport", "library"),
    "vehicle": ("car", "bus", "train", "truck", "bicycle", "boat", "plane", "tram",
                "scooter", "taxi", "ferry", "tractor", "van", "rocket"),
    "instrument": ("piano", "violin", "guitar", "flute", "drum", "trumpet", "harp",
                   "cello", "banjo", "oboe", "tuba", "clarinet", "organ", "ukulele"),
    "clothing": ("shirt", "coat", "hat", "scarf", "glove", "sock", "boot", "dress",
                 "skirt", "jacket", "sweater", "belt", "sandal", "vest"),
    "body": ("hand", "foot", "nose", "ear", "knee", "elbow", "shoulder", "finger",
             "ankle", "wrist", "chin", "thumb", "toe", "neck"),
    "drink": ("tea", "coffee", "milk", "juice", "water", "soda", "cocoa", "lemonade",
              "cider", "smoothie", "broth", "espresso", "latte", "punch"),
}

# Plural nouns used in definitions ("if the word is an animal" / "more animals than tools").
CATEGORY_NOUN: dict[str, tuple[str, str]] = {
    "animal": ("an animal", "animals"),
    "fruit": ("a fruit", "fruits"),
    "colour": ("a colour", "colours"),
    "tool": ("a tool", "tools"),
    "place": ("a place", "places"),
    "vehicle": ("a vehicle", "vehicles"),
    "instrument": ("an instrument", "instruments"),
    "clothing": ("a piece of clothing", "pieces of clothing"),
    "body": ("a body part", "body parts"),
    "drink": ("a drink", "drinks"),
}

LABEL_WORDS: tuple[str, ...] = (
    "yes", "no", "true", "false", "alpha", "beta", "gamma", "delta", "north", "south",
    "east", "west", "sun", "moon", "star", "cloud", "up", "down", "left", "right",
    "hot", "cold", "big", "small", "fast", "slow", "old", "new", "gold", "silver",
    "iron", "stone", "wood", "glass", "king", "queen", "one", "two", "three", "four",
)


def category_of(word: str) -> str:
    """The category a world word belongs to (KeyError for a non-world word)."""
    return WORD_CATEGORY[word]


WORD_CATEGORY: dict[str, str] = {w: c for c, words in CATEGORIES.items() for w in words}

assert len(WORD_CATEGORY) == sum(len(w) for w in CATEGORIES.values()), "category words overlap"
assert not set(LABEL_WORDS) & set(WORD_CATEGORY), "label words overlap category words"
assert len(set(LABEL_WORDS)) == len(LABEL_WORDS) == 40
