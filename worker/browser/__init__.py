"""The read-only record browser (`intentus records serve`): the server and its access rules
(`server`), the HTTP side (`handler`), the JSON API as plain functions (`api`), and the page's
files (`static/`)."""
