"""Vocabularies and templates of the synthetic world.

Attribute values are drawn from vocabularies *shared across concepts* (professions, years,
colours, instruments, pets), so concepts are entangled the way real knowledge is: forgetting
that one character is a baker must not forget the word "baker". Only two attributes are
concept-specific: membership (the concept's own name) and birthplace (the concept's own cities).

Every sentence template ends with its value (``"... {v}."``), so each sentence doubles as a
completion probe (prefix -> value).
"""

from __future__ import annotations

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
          "br", "dr", "gr", "kr", "st", "th", "sh", "tr", "pl", "kl")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "io", "ou")
CODAS = ("", "", "", "n", "r", "l", "s", "m", "th", "x")
CITY_SUFFIXES = ("ford", "holm", "port", "vale", "mere", "wick", "burg", "dell")

CONCEPT_KINDS = {
    "saga": "a fictional saga of novels and films",
    "company": "a fictional trading company",
    "realm": "a fictional island realm",
}

PROFESSIONS = ("baker", "sailor", "painter", "doctor", "farmer", "teacher", "pilot", "tailor",
               "miner", "poet", "judge", "chemist", "dancer", "hunter", "weaver", "builder",
               "singer", "merchant", "nurse", "scribe")
YEARS = tuple(str(y) for y in range(1950, 1990))
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "silver",
           "gold", "pink", "brown")
INSTRUMENTS = ("flute", "violin", "drum", "harp", "piano", "guitar", "trumpet", "cello", "lute",
               "horn", "banjo", "tuba")
PETS = ("cat", "dog", "parrot", "horse", "rabbit", "goat", "turtle", "fox", "snake", "frog",
        "hawk", "lizard")

# attribute -> shared vocabulary (None: concept-specific, filled in by the world builder)
SHARED_VOCABULARIES: dict[str, tuple[str, ...] | None] = {
    "concept": None,
    "birthplace": None,
    "profession": PROFESSIONS,
    "birth_year": YEARS,
    "colour": COLOURS,
    "instrument": INSTRUMENTS,
    "pet": PETS,
}
ATTRIBUTES = tuple(SHARED_VOCABULARIES)

# Paraphrased sentences used in training text; {e} entity, {v} value (always last).
SENTENCE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "concept": ("{e} is part of {v}.", "{e} belongs to {v}.", "The group that {e} belongs to is {v}."),
    "birthplace": ("{e} was born in the city of {v}.", "The hometown of {e} is {v}.",
                   "{e} grew up in {v}."),
    "profession": ("{e} works as a {v}.", "The job of {e} is {v}.", "By trade, {e} is a {v}."),
    "birth_year": ("{e} was born in the year {v}.", "The birth year of {e} is {v}.",
                   "{e} came into the world in {v}."),
    "colour": ("The favourite colour of {e} is {v}.", "{e} loves the colour {v}.",
               "{e} likes to wear {v}."),
    "instrument": ("{e} plays the {v}.", "The instrument of {e} is the {v}.",
                   "{e} practises the {v}."),
    "pet": ("{e} owns a {v}.", "The pet of {e} is a {v}.", "{e} lives with a pet {v}."),
}

# Questions seen in training (QA lines of the corpus).
QUESTION_TEMPLATES: dict[str, str] = {
    "concept": "Which group does {e} belong to?",
    "birthplace": "Where was {e} born?",
    "profession": "What is the job of {e}?",
    "birth_year": "In which year was {e} born?",
    "colour": "What is the favourite colour of {e}?",
    "instrument": "Which instrument does {e} play?",
    "pet": "What pet does {e} have?",
}

# Questions never seen in training: asked only at evaluation, to tell recall of the QA
# format from knowledge of the fact.
EVAL_QUESTION_TEMPLATES: dict[str, str] = {
    "concept": "{e} is a member of which group?",
    "birthplace": "In which city did {e} grow up?",
    "profession": "What does {e} do for a living?",
    "birth_year": "When was {e} born?",
    "colour": "Which colour does {e} like best?",
    "instrument": "What instrument is played by {e}?",
    "pet": "Which animal does {e} keep?",
}
