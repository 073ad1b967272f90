"""Token generation (the LM's loop): a preallocated key/value cache, one step function, audiocraft's sampling."""
