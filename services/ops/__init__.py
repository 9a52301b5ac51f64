"""Operator views of the running pipeline that change nothing: consumer lag."""
