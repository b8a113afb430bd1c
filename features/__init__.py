"""The pure core of crmflow: events, client state, features and trigger rules.

Nothing here performs I/O or reads the clock; time is always an argument.
"""
