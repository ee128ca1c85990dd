"""The mlc IR: scalar/symbolic expressions, types, graph functions, tensor programs, modules."""

from .diagnostics import Loc, MlcError
from .expr import Bin, Call, Cast, Const, Expr, Load, Not, Select, Var, const
from .graph import (
    Binding,
    Block,
    CallExtern,
    CallGraph,
    CallTensor,
    Constant,
    Function,
    GetItem,
    If,
    Loop,
    MakeTuple,
    MatchCast,
    Node,
    OpCall,
    Scalar,
    Value,
    attrs_of,
)
from .module import IR_VERSION, ConstantsRef, Module
from .tir import BlockStmt, Buffer, For, IfStmt, IterVar, Let, PrimFunc, Seq, Stmt, Store
from .types import ScalarType, TensorType, TupleType, Type, UnknownType

__all__ = [
    "Loc", "MlcError", "Bin", "Call", "Cast", "Const", "Expr", "Load", "Not", "Select", "Var", "const",
    "Binding", "Block", "CallExtern", "CallGraph", "CallTensor", "Constant", "Function", "GetItem", "If",
    "Loop", "MakeTuple", "MatchCast", "Node", "OpCall", "Scalar", "Value", "attrs_of", "IR_VERSION",
    "ConstantsRef", "Module", "Buffer", "BlockStmt", "For", "IfStmt", "IterVar", "Let", "PrimFunc", "Seq",
    "Stmt", "Store", "ScalarType", "TensorType", "TupleType", "Type", "UnknownType",
]
