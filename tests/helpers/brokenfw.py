def write(data, path):
    with open(path, "wb") as f:
        f.write(data)
    return len(data)
