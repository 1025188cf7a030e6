"""Pure analysis pipeline: arrays in, arrays and dataclasses out. No sockets, UI or metrics."""
