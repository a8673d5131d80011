"""Pure decisions: no IO, no clock reads. Time is always passed in."""
