from ._messages import DataRow

def decode_data_rows(
    buf: bytes, pos: int, end: int, limit: int, columns: int, max_rows: int,
    row_type: type[DataRow], /,
) -> tuple[list[DataRow], int]: ...
