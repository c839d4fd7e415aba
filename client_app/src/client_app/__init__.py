"""Load client that sends GET requests to the rate-limited service and retries
429 responses with exponential backoff."""
