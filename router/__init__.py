"""Intake, identity, threading, assignment, SLA and the outbox."""
