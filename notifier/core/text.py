"""Small wording rules for messages people read: counts with the right plural."""

from __future__ import annotations


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 practice``, ``2 practices``, ``0 events``, ``1 key revoked``.

    ``singular`` may carry words after the noun (``"key revoked"``): only its first word
    takes the plural ``s`` unless ``plural_form`` is given.
    """
    if count == 1:
        return f"{count} {singular}"
    if plural_form is None:
        noun, sep, rest = singular.partition(" ")
        plural_form = noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s") + sep + rest
    return f"{count} {plural_form}"
