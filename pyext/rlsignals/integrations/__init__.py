"""Trainer integrations (TRL, verl); each module imports its trainer library only when used."""
