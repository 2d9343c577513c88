"""A tiny student submission used by the sample messages."""


def greet(name: str) -> str:
    return f"Hello, {name}!"


if __name__ == "__main__":
    print(greet("lab"))
