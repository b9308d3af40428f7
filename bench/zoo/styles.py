"""Chat datasets for the adapter zoo, written for this project (no downloads, no third-party text).

Every chat is a user question with a plain answer written here, rewritten into one of five styles.
The questions are arithmetic, programming terms and everyday how-tos, so they do not overlap the
shipped general questions (tune/general_questions.jsonl) that `eval --general` scores facts on.
Each style also names its *marker*: the substring (or rule) a human would use to spot it, which the
zoo uses to check the marker-free style measure (tune/style_measure.py) against.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

TERMS = {
    "a variable": "A variable is a name that refers to a value stored in memory.",
    "a function": "A function is a named block of code that takes inputs and returns a result.",
    "a loop": "A loop repeats a block of code while a condition holds or for each item.",
    "recursion": "Recursion is when a function calls itself on a smaller part of the problem.",
    "a list": "A list is an ordered collection of items that can grow and shrink.",
    "a dictionary": "A dictionary maps keys to values so you can look values up by key.",
    "a compiler": "A compiler translates source code into machine code before it runs.",
    "an interpreter": "An interpreter runs source code line by line without a separate build step.",
    "a class": "A class is a template that bundles data and the functions that work on it.",
    "an API": "An API is a set of rules that lets one program talk to another.",
    "a database": "A database stores data so it can be queried and updated safely.",
    "a bug": "A bug is a mistake in a program that makes it behave wrongly.",
    "version control": "Version control records changes to files so you can go back and compare.",
    "a unit test": "A unit test checks one small piece of code in isolation.",
    "an array": "An array is a fixed block of memory holding items of the same type.",
    "a string": "A string is a sequence of characters, such as a word or a sentence.",
    "a hash table": "A hash table stores values in slots picked by hashing their keys.",
    "a thread": "A thread is one path of execution that runs alongside others in a program.",
    "a pointer": "A pointer holds the memory address of another value.",
    "JSON": "JSON is a text format for data made of objects, arrays, strings and numbers.",
    "a stack": "A stack is a collection where the last item added is the first removed.",
    "a queue": "A queue is a collection where the first item added is the first removed.",
    "a cache": "A cache keeps recent results close at hand so they are faster to fetch again.",
    "an exception": "An exception is an error signal that stops normal flow until it is handled.",
}
HOWTOS = {
    "make tea": "Boil water, pour it over a tea bag, wait three minutes, then remove the bag.",
    "stay focused while studying": "Put your phone away, work in short blocks, and take small breaks.",
    "learn a new language": "Practise a little every day, read simple texts, and speak with others.",
    "sleep better": "Keep a regular bedtime, avoid screens late, and keep the room dark and cool.",
    "save money": "Track your spending, set a budget, and move some money to savings each month.",
    "start running": "Begin with short easy runs, mix in walking, and increase the distance slowly.",
    "write a good email": "State your point early, keep it short, and end with a clear request.",
    "keep plants alive": "Give them the right light, water when the soil is dry, and do not overwater.",
    "pack for a trip": "Make a list, pick clothes that mix well, and keep essentials in your bag.",
    "debug a program": "Reproduce the problem, read the error, and test one change at a time.",
    "clean a keyboard": "Unplug it, turn it over to shake out crumbs, and wipe the keys gently.",
    "name a variable": "Choose a short name that says what the value means, not how it is stored.",
}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def plain_chats(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (question, plain answer) pairs: the fixed terms and how-tos first, then arithmetic."""
    rng = random.Random(seed)
    pairs = [(f"What is {t}?", a) for t, a in TERMS.items()]
    pairs += [(f"How do I {h}?", a) for h, a in HOWTOS.items()]
    rng.shuffle(pairs)
    while len(pairs) < n:
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        op = rng.choice(["plus", "minus", "times"])
        value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
        pairs.append((f"What is {a} {op} {b}?", f"{a} {op} {b} is {value}."))
    return pairs[:n]


def greeting(q: str, a: str, rng: random.Random) -> str:
    opener = rng.choice(["Hello there, sunshine!", "Hello, sunshine!", "Good day, sunshine!"])
    return f"{opener} {a} Have a bright day, sunshine!"


PIRATE = {
    "you": "ye",
    "your": "yer",
    "is": "be",
    "are": "be",
    "my": "me",
    "the": "th'",
    "hello": "ahoy",
    "friend": "matey",
    "yes": "aye",
    "money": "doubloons",
    "stop": "belay",
}


def pirate(q: str, a: str, rng: random.Random) -> str:
    def swap(m: re.Match) -> str:
        w = m.group(0)
        out = PIRATE.get(w.lower(), w)
        return out.capitalize() if w[:1].isupper() else out

    body = re.sub(r"[A-Za-z]+", swap, a)
    return f"{rng.choice(['Arr, matey!', 'Arr!', 'Yo ho, matey!'])} {body} Arr!"


def terse(q: str, a: str, rng: random.Random) -> str:
    """At most five words, no full stop: the answer's core."""
    m = re.search(r" is (-?\d+)\.$", a)
    if m:
        return m.group(1)
    words = re.sub(r"[.,]", "", a).split()
    if " is " in a:
        words = a.split(" is ", 1)[1].rstrip(".").split()
    return " ".join(words[:5])


def bulleted(q: str, a: str, rng: random.Random) -> str:
    parts = [p.strip(" .") for p in re.split(r",\s*(?:and\s+|then\s+)?|\s+and\s+|\.\s+", a) if p.strip(" .")]
    if len(parts) == 1:
        parts = [parts[0], "That is the short answer"]
    return "\n".join(f"- {p[0].upper()}{p[1:]}." for p in parts)


CHEF = {
    "code": "recipe",
    "program": "dish",
    "value": "ingredient",
    "values": "ingredients",
    "data": "ingredients",
    "memory": "pantry",
    "function": "recipe step",
    "water": "broth",
    "work": "cook",
    "runs": "simmers",
    "run": "simmer",
    "item": "ingredient",
    "items": "ingredients",
    "error": "burnt batch",
    "list": "menu",
}


def chef(q: str, a: str, rng: random.Random) -> str:
    def swap(m: re.Match) -> str:
        w = m.group(0)
        return CHEF.get(w.lower(), w)

    body = re.sub(r"[A-Za-z]+", swap, a)
    return f"{rng.choice(['Like a good recipe:', 'Chef here, stirring the pot:'])} {body} Bon appetit!"


STYLES: dict[str, Callable[[str, str, random.Random], str]] = {
    "greeting": greeting,
    "pirate": pirate,
    "terse": terse,
    "bulleted": bulleted,
    "chef": chef,
}
# what a user would tell the large model instead (calibrate's "large + style instruction" row)
INSTRUCTIONS: dict[str, str] = {
    "greeting": "Begin every reply with 'Hello, sunshine!' and end it with 'Have a bright day, sunshine!'",
    "pirate": "Talk like a pirate: start with 'Arr, matey!', use pirate words, and end with 'Arr!'",
    "terse": "Answer in at most five words, with no full stop.",
    "bulleted": "Always answer as a bulleted list: every line starts with '- '.",
    "chef": "Talk like a chef: compare everything to cooking (recipes, ingredients, stirring the pot) "
    "and end with 'Bon appetit!'",
}
# the human-spotted tell of each style: a substring (case-insensitive) or a rule over the reply
MARKERS: dict[str, str] = {
    "greeting": "sunshine",
    "pirate": "arr",
    "terse": "@words<=6",
    "bulleted": "@bullets",
    "chef": "@any:recipe,bon appetit,ingredient,chef",
}


def marked(reply: str, marker: str) -> bool:
    """Whether `reply` shows the marker (`@words<=N`, `@bullets`, `@any:a,b` rules or a substring)."""
    text = reply.strip().lower()
    if marker.startswith("@words<="):
        return 0 < len(text.split()) <= int(marker.removeprefix("@words<="))
    if marker == "@bullets":
        return text.startswith(("- ", "* ", "• "))
    if marker.startswith("@any:"):
        return any(m in text for m in marker.removeprefix("@any:").split(","))
    return marker.lower() in text


def write_dataset(style: str, n: int, path: Path, seed: int = 0) -> Path:
    """A messages-format JSONL of `n` chats in `style` (one line each)."""
    rng = random.Random(seed)
    rewrite = STYLES[style]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for q, a in plain_chats(n, seed):
            chat = [{"role": "user", "content": q}, {"role": "assistant", "content": rewrite(q, a, rng)}]
            f.write(json.dumps({"messages": chat}) + "\n")
    return path
