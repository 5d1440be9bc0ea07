"""placeholder"""
def main() -> None:
    print("tariff")
