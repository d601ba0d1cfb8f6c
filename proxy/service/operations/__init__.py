"""The operations of the predict, admin and deploy slots, one module per family.

Each operation declares the body model it takes; :class:`proxy.service.slots.Slot` parses a
request's body once, at the door, and hands the operation the validated body.
"""
