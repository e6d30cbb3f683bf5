#!/usr/bin/env python3
"""Lists import cycles between the modules of actors/src (its `use crate::`
lines, comments and test modules ignored). Prints `no cycles` when the
dependencies point one way. Run: python3 scripts/module_cycles.py"""
import re,os,sys,itertools
root=os.path.join(os.path.dirname(os.path.abspath(__file__)),'..','actors','src')
files={}
for dp,_,fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs') and f!='tests.rs':
            p=os.path.join(dp,f)
            rel=os.path.relpath(p,root)[:-3]
            mod=rel.replace('/mod','').replace('/','::')
            if mod=='lib': continue
            files[mod]='\n'.join(l for l in open(p).read().split('\n') if not l.strip().startswith('//'))
def target(path):
    parts=path.split('::')
    for i in range(len(parts),0,-1):
        m='::'.join(parts[:i])
        if m in files: return m
    return None
edges={m:set() for m in files}
for m,src in files.items():
    src=src.split('#[cfg(test)]')[0]
    for u in re.findall(r'use crate::([A-Za-z0-9_:]+)(?:::\{([^}]*)\})?',src):
        base=u[0]
        if u[1]:
            for item in u[1].split(','):
                item=item.strip()
                t=target(base+'::'+item) if item else None
                if t and t!=m: edges[m].add(t)
        t=target(base)
        if t and t!=m and not u[1]: edges[m].add(t)
        elif u[1] and target(base) and target(base)!=m and not any(target(base+'::'+i.strip()) not in (None,target(base)) for i in u[1].split(',') if i.strip()):
            edges[m].add(target(base))
    for u in re.findall(r'crate::([a-z_]+(?:::[a-z_]+)*)::[A-Z]',src):
        t=target(u)
        if t and t!=m: edges[m].add(t)
    if '::' in m:
        parent=m.rsplit('::',1)[0]
        if 'use super::' in src: edges[m].add(parent)
# find cycles (SCCs)
idx={};low={};st=[];on=set();sccs=[];c=[0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in edges[v]:
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v: break
        if len(comp)>1: sccs.append(comp)
for v in edges:
    if v not in idx: sc(v)
for s in sccs:
    print('cycle group:',sorted(s))
    for a in s:
        print('  ',a,'->',sorted(e for e in edges[a] if e in s))
print('no cycles' if not sccs else '')
