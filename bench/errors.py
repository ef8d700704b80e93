"""The one exception type that means "the user asked for something we cannot do"."""

import difflib


class UsageError(Exception):
    """A mistake in the user's input. The CLI prints the message on one line and exits with code 2."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean x?)' when a close match exists, else the list of valid choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; choose from: {', '.join(choices)}"


def yaml_problem(err) -> str:
    """A YAML parse error on one line: what is wrong and where (PyYAML's own message spans several)."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(err, 'problem', None) or str(err).splitlines()[0]}{where}"
