"""A seeded synthetic topic-classification dataset that needs no files.

Each class owns a handful of topic words; a sentence is filler words with two or three
topic words of its class mixed in. Real English words keep the WordPiece tokenizer
happy, and the signal is strong enough that a tiny random BERT with LoRA learns it in a
few rounds: the quick scenario's accuracy then shows that training really happens.
"""

from __future__ import annotations

import random

TOPICS: tuple[tuple[str, ...], ...] = (
    ("goal", "match", "team", "coach", "season", "player", "league", "score"),
    ("market", "stock", "bank", "profit", "price", "trade", "investor", "shares"),
    ("planet", "cell", "energy", "atom", "research", "physics", "species", "telescope"),
    ("election", "vote", "senate", "policy", "minister", "party", "campaign", "law"),
    ("movie", "actor", "music", "album", "film", "singer", "concert", "theater"),
    ("rain", "storm", "weather", "snow", "wind", "cloud", "forecast", "flood"),
    ("doctor", "patient", "hospital", "virus", "health", "medicine", "nurse", "disease"),
    ("computer", "software", "internet", "phone", "chip", "robot", "code", "network"),
)
TOPIC_NAMES = ("sports", "markets", "science", "politics", "arts", "weather", "health",
               "technology")  # a causal LM's label texts, one per tuple of TOPICS
FILLER: tuple[str, ...] = (
    "the", "a", "of", "and", "to", "in", "on", "with", "for", "new", "after", "today",
    "report", "says", "big", "year", "week", "people", "city", "time", "first", "last",
    "about", "over", "more", "some", "many", "this", "that", "local", "news", "story",
)


def make_examples(num_labels: int, size: int, seed: int, label_noise: float = 0.0,
                  first_topic: int = 0) -> list[dict]:
    """`size` examples {"sentence": str, "label": int}, balanced over `num_labels` classes;
    class c uses the words of topic (first_topic + c) mod 8, so tasks of a stream can
    draw on different topics.

    `label_noise` flips that share of labels to another class (uniformly), so that the
    task is not trivially separable and accuracy stays informative.
    """
    rng = random.Random(seed)
    examples = []
    for i in range(size):
        label = i % num_labels
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 12))]
        for _ in range(rng.randint(2, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(TOPICS[(first_topic + label) % len(TOPICS)]))
        if rng.random() < label_noise:
            label = (label + rng.randrange(1, num_labels)) % num_labels
        examples.append({"sentence": " ".join(words), "label": label})
    rng.shuffle(examples)
    return examples
