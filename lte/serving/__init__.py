"""`lte serve`: the OpenAI-compatible API, its queue, the web page and where generation runs."""
