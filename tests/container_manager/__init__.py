"""Tests of the container manager: the client library, its Clipper REST endpoint, its CLI."""
