"""The KoboldCpp API: pure wire translators (api) and the HTTP routes (routes)."""
