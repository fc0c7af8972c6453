"""The status page for people (``/ui``): server-rendered HTML over the status API's functions, no build step."""
