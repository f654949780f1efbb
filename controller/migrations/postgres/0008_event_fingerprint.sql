-- The SSH key an event came from: set for pushes (the key the pusher authenticated with),
-- NULL where an API token acted.
ALTER TABLE events ADD COLUMN fingerprint TEXT;
