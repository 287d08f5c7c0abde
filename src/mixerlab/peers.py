def load_timm_weights(*a, **k):
    raise NotImplementedError
