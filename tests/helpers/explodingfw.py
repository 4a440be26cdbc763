"""A module whose attributes blow up when inspected: a hook must not fail its import."""


class _Weird:
    def __getattr__(self, name):
        raise RuntimeError(f"inspecting {name} exploded")


thing = _Weird()


def save(data, path):
    with open(path, "wb") as f:
        f.write(data)
