def write_phantom_corpus(*a, **k): raise NotImplementedError
