"""Pure building blocks shared by every part of Valka: ids, task states, config, errors."""
