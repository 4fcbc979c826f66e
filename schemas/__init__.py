"""Soul's contracts: API bodies, Pub/Sub messages, Firestore documents and names. Pure pydantic; both the
functions and the GPU runner import it, and it imports neither a cloud client nor torch."""
